"""The signal machinery of every supervisor (minirun, --init): signals held, read from a signalfd.

The end-to-end proof is tests/test_pid1.py; these pin the two properties it rests on, with
real signals sent to this process.
"""
import os
import signal

from minirun import signals


def test_a_signal_sent_before_anyone_reads_waits_for_the_signalfd():
    # The race that a Python handler plus waitpid() loses: the signal lands before the
    # supervisor is waiting. Held, it stays pending until the signalfd is read.
    with signals.held():
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGHUP)
        watched = signals.SignalFd()
        try:
            assert sorted(watched.read()) == sorted([signal.SIGUSR1, signal.SIGHUP])
            assert watched.read() == []
        finally:
            watched.close()


def test_signals_left_unread_are_dropped_and_the_mask_restored():
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with signals.held():
        os.kill(os.getpid(), signal.SIGUSR2)       # unread: SIG_DFL would end this process
        assert signal.SIGUSR2 in signal.sigpending()
    assert signal.SIGUSR2 not in signal.sigpending()
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
