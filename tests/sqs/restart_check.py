"""What must survive a SIGKILL of `strata dev`: a FIFO group lock, the deduplication window, and a
delayed message. Run `before`, kill -9 and restart the server, then `after`, with the same state
file:

    python3 tests/sqs/restart_check.py before STATE.json
    python3 tests/sqs/restart_check.py after STATE.json

Uses the AWS_* variables of `dev-credentials.env`. Exits non-zero naming the failed check.
"""

import json
import os
import sys
import time

import boto3
from botocore.config import Config

DELAY_SECONDS = 20


def client():
    return boto3.client(
        "sqs",
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        region_name=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        config=Config(retries={"max_attempts": 1}),
    )


def check(condition, message):
    if not condition:
        print(f"FAILED: {message}")
        sys.exit(1)


def before(path):
    sqs = client()
    fifo = sqs.create_queue(QueueName="restart.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    first = sqs.send_message(QueueUrl=fifo, MessageBody="m1", MessageGroupId="g", MessageDeduplicationId="d1")
    second = sqs.send_message(QueueUrl=fifo, MessageBody="m2", MessageGroupId="g", MessageDeduplicationId="d2")
    got = sqs.receive_message(QueueUrl=fifo, MaxNumberOfMessages=1, VisibilityTimeout=300)["Messages"]
    check([m["Body"] for m in got] == ["m1"], f"first receive: {got}")
    delayed = sqs.create_queue(QueueName="restart-delayed")["QueueUrl"]
    sqs.send_message(QueueUrl=delayed, MessageBody="later", DelaySeconds=DELAY_SECONDS)
    state = {
        "fifo": fifo,
        "m1": first["MessageId"],
        "m2": second["MessageId"],
        "receipt": got[0]["ReceiptHandle"],
        "delayed": delayed,
        "due": time.time() + DELAY_SECONDS,
    }
    with open(path, "w") as f:
        json.dump(state, f)
    print("before: ok")


def after(path):
    with open(path) as f:
        state = json.load(f)
    sqs = client()
    # The group lock held by m1 (in flight for 300 s) survived: m2 is not delivered.
    got = sqs.receive_message(QueueUrl=state["fifo"], MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    check(got == [], f"group g must still be locked after the restart, got {[m['Body'] for m in got]}")
    # The deduplication window survived: resending d1 and d2 stores nothing new.
    for dedup, expected in (("d1", state["m1"]), ("d2", state["m2"])):
        again = sqs.send_message(QueueUrl=state["fifo"], MessageBody="dup", MessageGroupId="g",
                                 MessageDeduplicationId=dedup)
        check(again["MessageId"] == expected, f"deduplication of {dedup} after the restart: {again}")
    # The delayed message is still delayed (when the restart was quicker than its delay), then comes.
    if time.time() < state["due"] - 2:
        attrs = sqs.get_queue_attributes(QueueUrl=state["delayed"], AttributeNames=["ApproximateNumberOfMessagesDelayed"])
        check(attrs["Attributes"]["ApproximateNumberOfMessagesDelayed"] == "1", f"still delayed: {attrs}")
        check(sqs.receive_message(QueueUrl=state["delayed"]).get("Messages", []) == [], "delivered before its delay")
    else:
        print("note: the restart took longer than the delay; only its delivery is checked")
    deadline = state["due"] + 15
    got = []
    while not got and time.time() < deadline:
        got = sqs.receive_message(QueueUrl=state["delayed"], WaitTimeSeconds=5).get("Messages", [])
    check([m["Body"] for m in got] == ["later"], f"the delayed message after its delay: {got}")
    check(time.time() >= state["due"] - 1, "the delayed message came early")
    # Deleting m1 with its pre-restart receipt opens the group: m2 comes, then nothing else.
    sqs.delete_message(QueueUrl=state["fifo"], ReceiptHandle=state["receipt"])
    got = sqs.receive_message(QueueUrl=state["fifo"], MaxNumberOfMessages=10, WaitTimeSeconds=2).get("Messages", [])
    check([m["Body"] for m in got] == ["m2"], f"after deleting m1: {[m['Body'] for m in got]}")
    print("after: ok")


if __name__ == "__main__":
    {"before": before, "after": after}[sys.argv[1]](sys.argv[2])
