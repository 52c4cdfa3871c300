#!/usr/bin/env python3
"""Feishu's official Python SDK (lark-oapi) against the sandbox, as if it were Feishu.

The four seed endpoints with their state machines, then generated endpoints (a read
and two writes), whose zero-valued data the SDK must parse into its own classes.

Usage: lark_oapi_check.py BASE_URL APP_ID APP_SECRET
Expects a sandbox started with the demo records (seed_demo). Exits 1 on a mismatch,
3 when lark-oapi is not installed.
"""
import re
import sys

try:
    import lark_oapi as lark
    from lark_oapi.api.corehr.v2 import (
        RestoreFlowInstancePreHireRequest,
        RestoreFlowInstancePreHireRequestBody,
        RevokeJobChangeRequest,
        RevokeJobChangeRequestBody,
        RevokeOffboardingRequest,
        RevokeOffboardingRequestBody,
        SearchPreHireRequest,
        SearchPreHireRequestBody,
        WithdrawOnboardingPreHireRequest,
        WithdrawOnboardingPreHireRequestBody,
    )
    from lark_oapi.api.hire.v1 import (
        CancelOnboardApplicationRequest,
        CancelOnboardApplicationRequestBody,
        TerminateApplicationRequest,
        TerminateApplicationRequestBody,
    )
except ImportError as e:
    print(f"lark-oapi is not installed ({e}): pip install lark-oapi", file=sys.stderr)
    sys.exit(3)

LOG_ID = re.compile(r"^\d{14}[0-9A-F]{24}$")
failures = []


def check(name, response, code, msg=None, data=None):
    got = (response.code, response.msg)
    ok = response.code == code and (msg is None or response.msg == msg)
    ok = ok and response.success() == (code == 0)
    log_id = response.get_log_id()
    ok = ok and log_id is not None and LOG_ID.match(log_id) is not None
    if code != 0:
        # The generated response classes leave `error` as the raw dict.
        err = response.error
        err_log_id = err.get("log_id") if isinstance(err, dict) else getattr(err, "log_id", None)
        ok = ok and err_log_id == log_id
    if data is not None:
        ok = ok and response.data is not None and all(
            getattr(response.data, k, None) == v for k, v in data.items()
        )
    print(f"{'ok  ' if ok else 'FAIL'} {name}: code={got[0]} msg={got[1]!r} log_id={log_id}")
    if not ok:
        failures.append(name)


def main():
    base_url, app_id, app_secret = sys.argv[1:4]
    client = (
        lark.Client.builder()
        .app_id(app_id)
        .app_secret(app_secret)
        .domain(base_url)
        .log_level(lark.LogLevel.WARNING)
        .build()
    )
    pre_hire = client.corehr.v2.pre_hire

    def withdraw(pre_hire_id):
        body = (
            WithdrawOnboardingPreHireRequestBody.builder()
            .pre_hire_id(pre_hire_id)
            .withdraw_reason("withdraw reason")
            .build()
        )
        return pre_hire.withdraw_onboarding(
            WithdrawOnboardingPreHireRequest.builder().request_body(body).build()
        )

    def restore(pre_hire_id):
        body = (
            RestoreFlowInstancePreHireRequestBody.builder()
            .pre_hire_id(pre_hire_id)
            .confirm_workforce(False)
            .build()
        )
        return pre_hire.restore_flow_instance(
            RestoreFlowInstancePreHireRequest.builder().request_body(body).build()
        )

    check("withdraw_onboarding", withdraw("7345005664477775407"), 0, "success", {"success": True})
    check(
        "withdraw_onboarding (onboarded)",
        withdraw("7345005664477775408"),
        1161129,
        'Unable to submit this task as pre-hire is in the "Onboarded" stage.',
    )
    check("restore_flow_instance", restore("7345005664477775407"), 0, "success", {"success": True})

    revoke = (
        RevokeOffboardingRequest.builder()
        .user_id_type("people_corehr_id")
        .request_body(
            RevokeOffboardingRequestBody.builder()
            .offboarding_id("7095671727698478604")
            .operator_id("6982509313466189341")
            .build()
        )
        .build()
    )
    check("offboarding.revoke", client.corehr.v2.offboarding.revoke(revoke), 0, "success")

    cancel = (
        CancelOnboardApplicationRequest.builder()
        .application_id("1111111111")
        .request_body(
            CancelOnboardApplicationRequestBody.builder()
            .termination_type(1)
            .termination_reason_id_list(["6959090661225640000"])
            .termination_reason_notes("候选人经历不匹配")
            .build()
        )
        .build()
    )
    check("application.cancel_onboard", client.hire.v1.application.cancel_onboard(cancel), 0, "success")

    # Generated endpoints: no records behind them, Feishu's envelope and the data shape.
    search = (
        SearchPreHireRequest.builder()
        .page_size(10)
        .user_id_type("people_corehr_id")
        .request_body(SearchPreHireRequestBody.builder().pre_hire_ids(["7345005664477775407"]).build())
        .build()
    )
    check(
        "pre_hire.search (generated read)",
        pre_hire.search(search),
        0,
        "success",
        {"items": [], "has_more": False, "page_token": ""},
    )
    job_change_revoke = (
        RevokeJobChangeRequest.builder()
        .job_change_id("7395114450473731628")
        .user_id_type("people_corehr_id")
        .request_body(RevokeJobChangeRequestBody.builder().operator_id("6982509313466189341").build())
        .build()
    )
    check(
        "job_change.revoke (generated write)",
        client.corehr.v2.job_change.revoke(job_change_revoke),
        0,
        "success",
        {"result": False, "message": ""},
    )
    terminate = (
        TerminateApplicationRequest.builder()
        .application_id("6960663240925956555")
        .request_body(
            TerminateApplicationRequestBody.builder()
            .termination_type(1)
            .termination_reason_list(["6960663240925956573"])
            .termination_reason_note("candidate declined")
            .build()
        )
        .build()
    )
    check(
        "application.terminate (generated write)",
        client.hire.v1.application.terminate(terminate),
        0,
        "success",
    )

    if failures:
        sys.exit(f"{len(failures)} mismatch(es): {', '.join(failures)}")


if __name__ == "__main__":
    main()
