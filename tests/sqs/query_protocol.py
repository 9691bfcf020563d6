"""The SQS query protocol (forms in, XML out) end to end, with botocore's own query serializer,
SigV4 signer and query parser, against a running `strata dev`.

    source DATA_DIR/dev-credentials.env   # AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...
    python3 tests/sqs/query_protocol.py

botocore now describes SQS for the JSON protocol only (`"protocol": "json"`), and its model no
longer carries the query protocol's names (`locationName` traits): serialized as it is, a list
`AttributeNames` would go out as `AttributeNames.1` and a map as `Attributes.1.key`, names that no
query-protocol client sends and SQS never answered. This script therefore loads the current model
(`get_service_model('sqs')`), lays over it the query traits of the last query-protocol SQS model
botocore shipped (botocore 1.31, `botocore/data/sqs/2012-11-05/service-2.json`: `QUERY_*` below),
and then uses botocore's query serializer and parser unchanged. What goes over the wire is what the
query-protocol SDKs send: `AttributeName.1=All`, `Attribute.1.Name=...`,
`SendMessageBatchRequestEntry.1.MessageAttribute.1.Value.DataType=...`; answers are parsed from
`<Message>`, `<Attribute><Name/><Value/></Attribute>`, `<BatchResultErrorEntry>`, ...

Requests go to `/` or, as query SDKs send queue operations, to the queue URL (once without a
`QueueUrl` parameter, as the AWS SDK for Java 1.x does), by POST and once by GET.

Exits non-zero with a message naming the failed step on any failure.
"""

import copy
import os
import sys
import time
import traceback
import urllib.parse
import uuid

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import botocore.httpsession
import botocore.model
import botocore.parsers
import botocore.serialize
import botocore.session

from sqs_digests import md5_hex, md5_of_attributes

# ---------------------------------------------------------------------------- the query traits

# Flattened list shapes: the name of their items.
QUERY_LIST_ITEM_NAMES = {
    "AWSAccountIdList": "AWSAccountId",
    "ActionNameList": "ActionName",
    "AttributeNameList": "AttributeName",
    "BatchResultErrorEntryList": "BatchResultErrorEntry",
    "BinaryList": "BinaryListValue",
    "ChangeMessageVisibilityBatchRequestEntryList": "ChangeMessageVisibilityBatchRequestEntry",
    "ChangeMessageVisibilityBatchResultEntryList": "ChangeMessageVisibilityBatchResultEntry",
    "DeleteMessageBatchRequestEntryList": "DeleteMessageBatchRequestEntry",
    "DeleteMessageBatchResultEntryList": "DeleteMessageBatchResultEntry",
    "ListMessageMoveTasksResultEntryList": "ListMessageMoveTasksResultEntry",
    "MessageAttributeNameList": "MessageAttributeName",
    "MessageList": "Message",
    # Not in the 1.31 model (added later); named by the same rule, as SQS documents it.
    "MessageSystemAttributeList": "MessageSystemAttributeName",
    "QueueUrlList": "QueueUrl",
    "SendMessageBatchRequestEntryList": "SendMessageBatchRequestEntry",
    "SendMessageBatchResultEntryList": "SendMessageBatchResultEntry",
    "StringList": "StringListValue",
    "TagKeyList": "TagKey",
}

# Flattened map shapes: (key name, value name, name of the map itself or None).
QUERY_MAP_NAMES = {
    "MessageBodyAttributeMap": ("Name", "Value", None),
    "MessageBodySystemAttributeMap": ("Name", "Value", None),
    "MessageSystemAttributeMap": ("Name", "Value", "Attribute"),
    "QueueAttributeMap": ("Name", "Value", "Attribute"),
    "TagMap": ("Key", "Value", "Tag"),
}

# Structure members renamed on the wire.
QUERY_MEMBER_NAMES = {
    ("CreateQueueRequest", "Attributes"): "Attribute",
    ("CreateQueueRequest", "tags"): "Tag",
    ("GetQueueAttributesResult", "Attributes"): "Attribute",
    ("ListQueueTagsResult", "Tags"): "Tag",
    ("Message", "Attributes"): "Attribute",
    ("Message", "MessageAttributes"): "MessageAttribute",
    ("MessageAttributeValue", "StringListValues"): "StringListValue",
    ("MessageAttributeValue", "BinaryListValues"): "BinaryListValue",
    ("MessageSystemAttributeValue", "StringListValues"): "StringListValue",
    ("MessageSystemAttributeValue", "BinaryListValues"): "BinaryListValue",
    ("SendMessageBatchRequestEntry", "MessageAttributes"): "MessageAttribute",
    ("SendMessageBatchRequestEntry", "MessageSystemAttributes"): "MessageSystemAttribute",
    ("SendMessageRequest", "MessageAttributes"): "MessageAttribute",
    ("SendMessageRequest", "MessageSystemAttributes"): "MessageSystemAttribute",
    ("SetQueueAttributesRequest", "Attributes"): "Attribute",
}


def query_service_model():
    session = botocore.session.get_session()
    json_model = session.get_service_model("sqs")
    if json_model.metadata.get("protocol") not in ("json", "query"):
        raise SystemExit(f"unexpected SQS protocol {json_model.metadata.get('protocol')!r} in botocore's model")
    data = copy.deepcopy(session.get_service_data("sqs"))
    shapes = data["shapes"]
    for name, item_name in QUERY_LIST_ITEM_NAMES.items():
        shapes[name]["member"]["locationName"] = item_name
    for name, (key, value, map_name) in QUERY_MAP_NAMES.items():
        shapes[name]["key"]["locationName"] = key
        shapes[name]["value"]["locationName"] = value
        shapes[name]["flattened"] = True
        if map_name:
            shapes[name]["locationName"] = map_name
    for (structure, member), wire in QUERY_MEMBER_NAMES.items():
        shapes[structure]["members"][member]["locationName"] = wire
    for name, operation in data["operations"].items():
        if "output" in operation:
            operation["output"]["resultWrapper"] = f"{name}Result"
    data["metadata"]["protocol"] = "query"
    data["metadata"]["protocols"] = ["query"]
    data["metadata"]["xmlNamespace"] = "http://queue.amazonaws.com/doc/2012-11-05/"
    return botocore.model.ServiceModel(data, "sqs")


# ---------------------------------------------------------------------------- the client


class QueryClient:
    def __init__(self):
        self.endpoint = os.environ["AWS_ENDPOINT_URL"].rstrip("/")
        self.region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
        self.credentials = botocore.credentials.Credentials(
            os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
        )
        self.model = query_service_model()
        self.serializer = botocore.serialize.create_serializer("query", include_validation=True)
        self.parser = botocore.parsers.create_parser("query")
        self.http = botocore.httpsession.URLLib3Session(timeout=30)
        self.last_wire = None
        self.failed_at = None

    def call(self, action, params, url=None, method="POST", drop_queue_url=False, presign=False):
        """Answers (HTTP status, parsed answer). `url`: where to send (default the endpoint);
        `method` GET puts the parameters into the query string; `drop_queue_url` leaves the
        QueueUrl parameter out (the URL path names the queue); `presign` (GET only) signs in the
        query string instead of the Authorization header."""
        operation = self.model.operation_model(action)
        request = self.serializer.serialize_to_request(params, operation)
        form = dict(request["body"])
        if drop_queue_url:
            form.pop("QueueUrl")
        encoded = urllib.parse.urlencode(form, doseq=True)
        self.last_wire = encoded
        target = url or self.endpoint + "/"
        if method == "GET":
            aws_request = botocore.awsrequest.AWSRequest(method="GET", url=f"{target}?{encoded}", headers={})
        else:
            aws_request = botocore.awsrequest.AWSRequest(
                method="POST", url=target, data=encoded.encode(), headers=request["headers"]
            )
        if presign:
            botocore.auth.SigV4QueryAuth(self.credentials, "sqs", self.region, expires=300).add_auth(aws_request)
        else:
            botocore.auth.SigV4Auth(self.credentials, "sqs", self.region).add_auth(aws_request)
        response = self.http.send(aws_request.prepare())
        shape = operation.output_shape
        parsed = self.parser.parse(
            {"status_code": response.status_code, "headers": response.headers, "body": response.content}, shape
        )
        if response.status_code < 300 and not response.headers.get("content-type", "").startswith("text/xml"):
            raise AssertionError(f"{action}: Content-Type {response.headers.get('content-type')!r}, not text/xml")
        return response.status_code, parsed


# ---------------------------------------------------------------------------- the checks


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


def ok(client, action, params, **kwargs):
    status, parsed = client.call(action, params, **kwargs)
    if status != 200:
        raise AssertionError(f"{action} failed with HTTP {status}: {parsed.get('Error')} (sent {client.last_wire})")
    return parsed


def run(client, steps):
    suffix = uuid.uuid4().hex[:8]
    name = f"query-protocol-{suffix}"

    def step(title):
        steps.append(title)
        print(f"- {title}", flush=True)

    step("CreateQueue with attributes")
    created = ok(
        client,
        "CreateQueue",
        {"QueueName": name, "Attributes": {"VisibilityTimeout": "45", "MessageRetentionPeriod": "3600"}},
    )
    expect("Attribute.1.Name=" in client.last_wire, f"the form should use Attribute.N.Name: {client.last_wire}")
    queue_url = created["QueueUrl"]
    expect(queue_url.endswith(f"/{name}"), f"QueueUrl {queue_url!r} should end with /{name}")
    # The queue URL as this client reaches it (the proxy builds it from the Host header).
    path = urllib.parse.urlparse(queue_url).path
    queue_target = client.endpoint + path

    try:
        step("GetQueueUrl")
        got = ok(client, "GetQueueUrl", {"QueueName": name})
        expect(got["QueueUrl"] == queue_url, f"GetQueueUrl answered {got['QueueUrl']!r}, expected {queue_url!r}")

        step("ListQueues (GET, parameters in the query string)")
        listed = ok(client, "ListQueues", {"QueueNamePrefix": name}, method="GET")
        expect(listed.get("QueueUrls") == [queue_url], f"ListQueues answered {listed.get('QueueUrls')!r}")

        step("ListQueues by a presigned URL (SigV4 in the query string)")
        listed = ok(client, "ListQueues", {"QueueNamePrefix": name}, method="GET", presign=True)
        expect(listed.get("QueueUrls") == [queue_url], f"presigned ListQueues answered {listed.get('QueueUrls')!r}")

        step("SendMessage with String, Number and Binary attributes, to the queue URL")
        body = "héllo <query> & \"protocol\" 'test'\r\nline two\t]]>"
        binary = bytes(range(256))
        attributes = {
            "s": {"DataType": "String", "StringValue": "v <&>"},
            "n": {"DataType": "Number", "StringValue": "-12.5"},
            "b": {"DataType": "Binary", "BinaryValue": binary},
        }
        sent = ok(
            client,
            "SendMessage",
            {"QueueUrl": queue_url, "MessageBody": body, "MessageAttributes": attributes},
            url=queue_target,
        )
        expect(
            "MessageAttribute.3.Value.BinaryValue=" in client.last_wire,
            f"the form should use MessageAttribute.N.Value.*: {client.last_wire}",
        )
        expect(sent["MD5OfMessageBody"] == md5_hex(body.encode()), f"MD5OfMessageBody {sent['MD5OfMessageBody']}")
        expect(
            sent.get("MD5OfMessageAttributes") == md5_of_attributes(attributes),
            f"MD5OfMessageAttributes {sent.get('MD5OfMessageAttributes')} != {md5_of_attributes(attributes)}",
        )
        expect(sent.get("MessageId"), "SendMessage answered no MessageId")

        step("SendMessageBatch with one bad entry")
        batch = ok(
            client,
            "SendMessageBatch",
            {
                "QueueUrl": queue_url,
                "Entries": [
                    {"Id": "one", "MessageBody": "batch one"},
                    {"Id": "bad", "MessageBody": "too late", "DelaySeconds": 901},
                    {
                        "Id": "two",
                        "MessageBody": "batch two",
                        "MessageAttributes": {"k": {"DataType": "String", "StringValue": "x"}},
                    },
                ],
            },
        )
        expect(
            "SendMessageBatchRequestEntry.3.MessageAttribute.1.Name=k" in client.last_wire,
            f"the form should use SendMessageBatchRequestEntry.N.*: {client.last_wire}",
        )
        successful = {entry["Id"]: entry for entry in batch.get("Successful", [])}
        failed = {entry["Id"]: entry for entry in batch.get("Failed", [])}
        expect(set(successful) == {"one", "two"}, f"Successful ids {sorted(successful)}")
        expect(set(failed) == {"bad"}, f"Failed ids {sorted(failed)}")
        expect(failed["bad"]["SenderFault"] is True, f"SenderFault {failed['bad']['SenderFault']!r}")
        expect(failed["bad"]["Code"] == "InvalidParameterValue", f"Failed code {failed['bad']['Code']!r}")
        expect(successful["one"]["MD5OfMessageBody"] == md5_hex(b"batch one"), "MD5 of batch one")
        expect(
            successful["two"].get("MD5OfMessageAttributes")
            == md5_of_attributes({"k": {"DataType": "String", "StringValue": "x"}}),
            "MD5OfMessageAttributes of batch two",
        )

        step("ReceiveMessage with AttributeNames All and MessageAttributeNames All")
        received = {}
        deadline = time.monotonic() + 10
        while len(received) < 3 and time.monotonic() < deadline:
            answer = ok(
                client,
                "ReceiveMessage",
                {
                    "QueueUrl": queue_url,
                    "AttributeNames": ["All"],
                    "MessageAttributeNames": ["All"],
                    "MaxNumberOfMessages": 10,
                    "WaitTimeSeconds": 1,
                },
                url=queue_target,
            )
            for message in answer.get("Messages", []):
                received[message["Body"]] = message
        expect("AttributeName.1=All" in client.last_wire, f"the form should use AttributeName.N: {client.last_wire}")
        expect(
            set(received) == {body, "batch one", "batch two"},
            f"received bodies {sorted(received)!r}",
        )
        message = received[body]
        expect(message["MessageId"] == sent["MessageId"], "MessageId of the received message")
        expect(message["MD5OfBody"] == md5_hex(body.encode()), "MD5OfBody of the received message")
        expect(message["MessageAttributes"] == attributes, f"MessageAttributes {message['MessageAttributes']!r}")
        expect(message["MD5OfMessageAttributes"] == md5_of_attributes(attributes), "MD5OfMessageAttributes")
        system = message.get("Attributes", {})
        for attribute in ("SenderId", "SentTimestamp", "ApproximateReceiveCount", "ApproximateFirstReceiveTimestamp"):
            expect(attribute in system, f"system attribute {attribute} missing from {system!r}")
        expect(system["ApproximateReceiveCount"] == "1", f"ApproximateReceiveCount {system['ApproximateReceiveCount']}")
        expect(
            received["batch two"]["MessageAttributes"] == {"k": {"DataType": "String", "StringValue": "x"}},
            "MessageAttributes of batch two",
        )

        step("ChangeMessageVisibility")
        ok(
            client,
            "ChangeMessageVisibility",
            {"QueueUrl": queue_url, "ReceiptHandle": message["ReceiptHandle"], "VisibilityTimeout": 0},
        )
        status, parsed = client.call(
            "ChangeMessageVisibility",
            {"QueueUrl": queue_url, "ReceiptHandle": "not-a-receipt", "VisibilityTimeout": 0},
        )
        expect(status == 400, f"ChangeMessageVisibility of a bad receipt: HTTP {status}")
        expect(parsed["Error"]["Code"] == "ReceiptHandleIsInvalid", f"error {parsed['Error']!r}")

        step("ReceiveMessage again: the message is visible again")
        again = None
        deadline = time.monotonic() + 10
        while again is None and time.monotonic() < deadline:
            answer = ok(
                client,
                "ReceiveMessage",
                {"QueueUrl": queue_url, "AttributeNames": ["ApproximateReceiveCount"], "WaitTimeSeconds": 1},
            )
            again = next((m for m in answer.get("Messages", []) if m["Body"] == body), None)
        expect(again is not None, "the message did not become visible again")
        expect(again["Attributes"] == {"ApproximateReceiveCount": "2"}, f"Attributes {again['Attributes']!r}")
        expect("MessageAttributes" not in again, "MessageAttributes were not asked for")

        step("DeleteMessageBatch with one bad receipt")
        deleted = ok(
            client,
            "DeleteMessageBatch",
            {
                "QueueUrl": queue_url,
                "Entries": [
                    {"Id": "first", "ReceiptHandle": again["ReceiptHandle"]},
                    {"Id": "second", "ReceiptHandle": received["batch one"]["ReceiptHandle"]},
                    {"Id": "third", "ReceiptHandle": received["batch two"]["ReceiptHandle"]},
                    {"Id": "bogus", "ReceiptHandle": "not-a-receipt"},
                ],
            },
        )
        expect(
            {e["Id"] for e in deleted.get("Successful", [])} == {"first", "second", "third"},
            f"DeleteMessageBatch Successful {deleted.get('Successful')!r}",
        )
        expect([e["Id"] for e in deleted.get("Failed", [])] == ["bogus"], f"Failed {deleted.get('Failed')!r}")
        expect(deleted["Failed"][0]["Code"] == "ReceiptHandleIsInvalid", f"Failed {deleted['Failed']!r}")

        step("GetQueueAttributes All, at the queue URL without a QueueUrl parameter")
        attributes_answer = ok(
            client,
            "GetQueueAttributes",
            {"QueueUrl": queue_url, "AttributeNames": ["All"]},
            url=queue_target,
            drop_queue_url=True,
        )
        expect("QueueUrl=" not in client.last_wire, "QueueUrl should have been left out")
        queue_attributes = attributes_answer["Attributes"]
        expect(queue_attributes.get("VisibilityTimeout") == "45", f"Attributes {queue_attributes!r}")
        expect(queue_attributes.get("MessageRetentionPeriod") == "3600", f"Attributes {queue_attributes!r}")
        expect(queue_attributes.get("ApproximateNumberOfMessages") == "0", f"Attributes {queue_attributes!r}")
        expect(queue_attributes.get("QueueArn", "").endswith(f":{name}"), f"Attributes {queue_attributes!r}")

        step("SetQueueAttributes, then GetQueueAttributes of one attribute")
        ok(client, "SetQueueAttributes", {"QueueUrl": queue_url, "Attributes": {"DelaySeconds": "2"}})
        one = ok(client, "GetQueueAttributes", {"QueueUrl": queue_url, "AttributeNames": ["DelaySeconds"]})
        expect(one["Attributes"] == {"DelaySeconds": "2"}, f"Attributes {one['Attributes']!r}")

        step("an unknown action and a JSON-protocol name are refused")
        form = urllib.parse.urlencode({"Action": "ReceiveMessage", "QueueUrl": queue_url, "AttributeNames.1": "All"})
        error = raw_error(client, form)
        expect(error == ("InvalidParameterValue", 400), f"AttributeNames.1 answered {error}")
        error = raw_error(client, urllib.parse.urlencode({"Action": "Frobnicate"}))
        expect(error == ("InvalidAction", 400), f"an unknown action answered {error}")
    except Exception:
        client.failed_at = (steps[-1], client.last_wire)
        raise
    finally:
        step("DeleteQueue")
        ok(client, "DeleteQueue", {"QueueUrl": queue_url}, url=queue_target)

    step("GetQueueUrl of a missing queue")
    status, parsed = client.call("GetQueueUrl", {"QueueName": name})
    expect(status == 400, f"GetQueueUrl of a deleted queue: HTTP {status}")
    expect(
        parsed["Error"]["Code"] == "AWS.SimpleQueueService.NonExistentQueue",
        f"GetQueueUrl of a deleted queue: {parsed['Error']!r}",
    )
    expect(parsed["Error"].get("Type") == "Sender", f"error type {parsed['Error']!r}")
    expect(parsed.get("ResponseMetadata", {}).get("RequestId"), f"no RequestId in {parsed!r}")


def raw_error(client, form):
    """Posts a hand-made form (signed); answers (query error code, HTTP status)."""
    request = botocore.awsrequest.AWSRequest(
        method="POST",
        url=client.endpoint + "/",
        data=form.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"},
    )
    botocore.auth.SigV4Auth(client.credentials, "sqs", client.region).add_auth(request)
    response = client.http.send(request.prepare())
    parsed = client.parser.parse(
        {"status_code": response.status_code, "headers": response.headers, "body": response.content}, None
    )
    return parsed.get("Error", {}).get("Code"), response.status_code


def main():
    for variable in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        if not os.environ.get(variable):
            raise SystemExit(f"{variable} is not set: source DATA_DIR/dev-credentials.env of a running strata dev")
    client = QueryClient()
    steps = []
    try:
        run(client, steps)
    except Exception as e:  # noqa: BLE001 - any failure is reported with its step
        traceback.print_exc()
        step, wire = client.failed_at or ((steps[-1] if steps else "setup"), client.last_wire)
        print(f"FAILED at step '{step}': {type(e).__name__}: {e}", file=sys.stderr)
        if wire:
            print(f"last request sent: {wire}", file=sys.stderr)
        print("0 passed, 1 failed")
        return 1
    print(f"query protocol: all {len(steps)} steps passed")
    print("1 passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
