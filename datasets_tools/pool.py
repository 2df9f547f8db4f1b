"""Process pools of the converter and the verifier: forkserver workers that end with their parent.

A pool worker blocks on its task queue, whose pipe the workers themselves keep open, so it never
sees its main process die; neither does the forkserver (the workers hold its "alive" pipe) nor
the resource tracker (it waits for all of them): after a kill -9 of ``convert --workers N`` they
would all sit idle for good. So each pool hands its workers the read end of a pipe whose only
write end the main process holds; a thread in each worker waits on it and ends the worker when
it closes, which the OS does when the main process exits, however it dies.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager


@contextmanager
def process_pool(workers: int, initializer=None):
    """A ``ProcessPoolExecutor`` of ``workers`` processes (context manager)."""
    # forkserver, not fork: a forked child can inherit OpenCV / FFmpeg thread locks held by the
    # parent and hang.
    context = multiprocessing.get_context("forkserver")
    main_alive, keep_alive = context.Pipe(duplex=False)
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_start_worker,
                                 initargs=(main_alive, initializer)) as pool:
            yield pool
    finally:
        keep_alive.close()
        main_alive.close()


def _start_worker(main_alive, initializer) -> None:
    threading.Thread(target=_exit_with_main, args=(main_alive,), daemon=True).start()
    if initializer is not None:
        initializer()


def _exit_with_main(main_alive) -> None:
    try:
        main_alive.recv_bytes()  # nothing is ever sent: this returns only at EOF, when the main process is gone
    except (EOFError, OSError):
        pass
    os._exit(1)
