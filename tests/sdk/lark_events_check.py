#!/usr/bin/env python3
"""Event pushes checked against Feishu's official Python SDK (lark-oapi), both ways.

Usage: lark_events_check.py ENCRYPT_KEY VERIFICATION_TOKEN APP_ID TICKET < pushes.json

1. Every push on stdin (a JSON list of {"name", "body", "headers", "expect"}, built by
   the sandbox) goes through the SDK's EventDispatcherHandler, configured with the key
   and token: `expect` is {"app_ticket": T} (accepted, ticket T), {"challenge": C}
   (answered with C) or "refused".
2. Then it prints one push of its own for APP_ID with TICKET, encrypted with
   pycryptodome (the SDK's own cipher library) and signed with hashlib, as a JSON
   object {"body", "headers"}, for the gateway to accept.

Exits 1 on a mismatch, 3 when lark-oapi is not installed.
"""
import base64
import hashlib
import json
import os
import sys
import time
import uuid

try:
    import lark_oapi as lark
    from Crypto.Cipher import AES
    from lark_oapi.core.model import RawRequest
except ImportError as e:
    print(f"lark-oapi is not installed ({e}): pip install lark-oapi", file=sys.stderr)
    sys.exit(3)


def sdk_handler(encrypt_key, token, received):
    on_ticket = lambda data: received.append(data.event)  # noqa: E731
    return (
        lark.EventDispatcherHandler.builder(encrypt_key, token, lark.LogLevel.CRITICAL)
        .register_p1_customized_event("app_ticket", on_ticket)
        .register_p2_customized_event("app_ticket", on_ticket)
        .build()
    )


def check_pushes(encrypt_key, token, pushes):
    failures = []
    for push in pushes:
        received = []
        req = RawRequest()
        req.uri = "/admin/app_ticket"
        req.body = push["body"].encode("utf-8")
        req.headers = dict(push["headers"])
        resp = sdk_handler(encrypt_key, token, received).do(req)
        body = json.loads(resp.content or b"{}")
        expect = push["expect"]
        if expect == "refused":
            ok = resp.status_code != 200 and not received
        elif "challenge" in expect:
            ok = resp.status_code == 200 and body.get("challenge") == expect["challenge"]
        else:
            ok = (
                resp.status_code == 200
                and len(received) == 1
                and received[0].get("app_ticket") == expect["app_ticket"]
            )
        print(f"{'ok  ' if ok else 'FAIL'} {push['name']}: HTTP {resp.status_code} {body}", file=sys.stderr)
        if not ok:
            failures.append(push["name"])
    return failures


def own_push(encrypt_key, token, app_id, ticket):
    event = {
        "ts": f"{time.time():.6f}",
        "uuid": uuid.uuid4().hex,
        "token": token,
        "type": "event_callback",
        "event": {"app_id": app_id, "app_ticket": ticket, "type": "app_ticket"},
    }
    plaintext = json.dumps(event).encode("utf-8")
    pad = AES.block_size - len(plaintext) % AES.block_size
    iv = os.urandom(AES.block_size)
    key = hashlib.sha256(encrypt_key.encode("utf-8")).digest()
    cipher = AES.new(key, AES.MODE_CBC, iv).encrypt(plaintext + bytes([pad]) * pad)
    body = json.dumps({"encrypt": base64.b64encode(iv + cipher).decode("ascii")})
    timestamp, nonce = str(int(time.time())), uuid.uuid4().hex[:16]
    signature = hashlib.sha256((timestamp + nonce + encrypt_key + body).encode("utf-8")).hexdigest()
    return {
        "body": body,
        "headers": {
            "X-Lark-Request-Timestamp": timestamp,
            "X-Lark-Request-Nonce": nonce,
            "X-Lark-Signature": signature,
        },
    }


def main():
    encrypt_key, token, app_id, ticket = sys.argv[1:5]
    failures = check_pushes(encrypt_key, token, json.load(sys.stdin))
    if failures:
        print(f"the SDK disagrees on: {', '.join(failures)}", file=sys.stderr)
        return 1
    print(json.dumps(own_push(encrypt_key, token, app_id, ticket)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
