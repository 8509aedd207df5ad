"""Fixtures of the app tests: run an app's command line in-process and capture what it prints."""

from __future__ import annotations

import contextlib
import io

import pytest


def _run_app(app, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = app.main(list(argv))
        except SystemExit as exc:  # argparse errors
            code = exc.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def run_app():
    return _run_app
