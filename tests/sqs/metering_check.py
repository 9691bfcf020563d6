"""Metering through boto3: the x-strata-customer message attribute and the SDK's invocation id.

Run with the variables `strata dev` writes (AWS_ENDPOINT_URL, keys, region). Makes these calls,
which the Rust test then finds in the tenant's usage, exactly:

- CreateQueue "metered" (no customer);
- SendMessage with the attribute x-strata-customer=shop-9;
- SendMessageBatch of two entries, both for shop-9;
- SendMessageBatch whose entries name different customers: refused (InvalidParameterValue),
  so not billed;
- SendMessage twice under one SDK invocation id (what the SDK does when it retries a call):
  stored once (the same MessageId) and billed once;
- GetQueueAttributes, to see that the queue holds 4 messages.

Prints "metering: ok" at the end.
"""

import boto3
from botocore.exceptions import ClientError

sqs = boto3.client("sqs")
url = sqs.create_queue(QueueName="metered")["QueueUrl"]


def customer(name):
    return {"x-strata-customer": {"DataType": "String", "StringValue": name}}


sqs.send_message(QueueUrl=url, MessageBody="one", MessageAttributes=customer("shop-9"))
batch = sqs.send_message_batch(
    QueueUrl=url,
    Entries=[
        {"Id": "a", "MessageBody": "two", "MessageAttributes": customer("shop-9")},
        {"Id": "b", "MessageBody": "three", "MessageAttributes": customer("shop-9")},
    ],
)
assert len(batch.get("Successful", [])) == 2, batch

try:
    sqs.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "a", "MessageBody": "x", "MessageAttributes": customer("shop-9")},
            {"Id": "b", "MessageBody": "y", "MessageAttributes": customer("shop-8")},
        ],
    )
    raise AssertionError("a batch for two customers was accepted")
except ClientError as e:
    assert e.response["Error"]["Code"] in ("InvalidParameterValue", "AWS.SimpleQueueService.InvalidParameterValue"), e


def one_invocation(context, **_):
    # botocore keeps the invocation id of a call in its context and sends it on every attempt;
    # setting it here makes two calls look like one call and its retry.
    context.setdefault("retries", {})["invocation-id"] = "a-call-the-sdk-retried"


sqs.meta.events.register("before-call.sqs.SendMessage", one_invocation)
first = sqs.send_message(QueueUrl=url, MessageBody="retried")
second = sqs.send_message(QueueUrl=url, MessageBody="retried")
sqs.meta.events.unregister("before-call.sqs.SendMessage", one_invocation)
assert first["MessageId"] == second["MessageId"], (first, second)

attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
assert attributes["Attributes"]["ApproximateNumberOfMessages"] == "4", attributes
print("metering: ok")
