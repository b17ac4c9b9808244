"""Drives ferry's controller with Alibaba's official Python SDK (alibabacloud-eds-aic20230930,
unmodified: only endpoint and protocol differ from a call to Alibaba Cloud).

    drive.py ENDPOINT ACCESS_KEY_ID ACCESS_KEY_SECRET CALL [--times N] [--fixed-nonce NONCE]
             [--date-offset SECONDS] [--request JSON]

CALL is send_file or describe_tasks; --request holds the SDK request's fields (snake_case, as
the SDK's model takes them). Prints one JSON list, one entry per call: {"ok": body} or
{"error": {"code", "status", "message", "request_id"}}. --fixed-nonce and --date-offset bend
the SDK's own nonce and clock (for the replay and expiry tests); the signing stays the SDK's.
"""
import argparse
import datetime
import json
import sys

from alibabacloud_eds_aic20230930 import models
from alibabacloud_eds_aic20230930.client import Client
from alibabacloud_tea_openapi.utils import Utils
from alibabacloud_tea_openapi.utils_models import Config

REQUESTS = {
    "send_file": (models.SendFileRequest, "send_file"),
    "describe_tasks": (models.DescribeTasksRequest, "describe_tasks"),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("endpoint")
    ap.add_argument("access_key_id")
    ap.add_argument("access_key_secret")
    ap.add_argument("call", choices=sorted(REQUESTS))
    ap.add_argument("--times", type=int, default=1)
    ap.add_argument("--fixed-nonce")
    ap.add_argument("--date-offset", type=int, default=0)
    ap.add_argument("--request", default="{}")
    args = ap.parse_args()

    if args.fixed_nonce:
        Utils.get_nonce = staticmethod(lambda: args.fixed_nonce)
    if args.date_offset:
        def shifted():
            at = datetime.datetime.now(datetime.timezone.utc)
            at += datetime.timedelta(seconds=args.date_offset)
            return at.strftime("%Y-%m-%dT%H:%M:%SZ")
        Utils.get_timestamp = staticmethod(shifted)

    client = Client(Config(
        access_key_id=args.access_key_id,
        access_key_secret=args.access_key_secret,
        endpoint=args.endpoint,
        protocol="http",
        region_id="cn-hangzhou",
    ))
    model, method = REQUESTS[args.call]
    outcomes = []
    for _ in range(args.times):
        request = model(**json.loads(args.request))
        try:
            outcomes.append({"ok": getattr(client, method)(request).body.to_map()})
        except Exception as e:  # the SDK's ClientException / ServerException
            outcomes.append({"error": {
                "code": getattr(e, "code", None),
                "status": getattr(e, "status_code", None),
                "message": str(getattr(e, "message", e)),
                "request_id": getattr(e, "request_id", None),
                "type": type(e).__name__,
            }})
    json.dump(outcomes, sys.stdout)


if __name__ == "__main__":
    main()
