"""`make serve`'s signal handling: the first stop signal unwinds, none after it can cut the cleanup short."""

import signal

import pytest

from scripts import serve


@pytest.fixture
def restore_handlers():
    saved = {s: signal.getsignal(s) for s in serve.STOP_SIGNALS}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize("signum", serve.STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_the_first_stop_signal_unwinds_and_later_ones_are_ignored(restore_handlers, signum):
    for s in serve.STOP_SIGNALS:
        signal.signal(s, serve._interrupt)
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signum)
    for s in serve.STOP_SIGNALS:  # a second Ctrl-C, make's forwarded SIGTERM, a hang-up
        assert signal.getsignal(s) is signal.SIG_IGN
        signal.raise_signal(s)  # ignored: no exception, the test goes on


def test_defaults_bind_loopback():
    args = serve._parse([])
    assert args.host == "127.0.0.1" and args.triton_host == "127.0.0.1"
    args = serve._parse(["--host", "0.0.0.0", "--", "--no-allow-pickle"])
    assert args.host == "0.0.0.0" and args.triton_host == "127.0.0.1" and args.frontend_args == ["--no-allow-pickle"]
