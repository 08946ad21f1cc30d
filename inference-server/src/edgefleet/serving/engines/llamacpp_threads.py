"""A llama.cpp CPU threadpool that sleeps instead of spinning between tokens.

By default ggml's worker threads busy-wait after each decode. In-process that
costs nothing, but a server must also run gRPC, the event loop and its
clients on the same cores: with every core spinning, each token's network
work waits for the spin to end, and single-stream speed dropped by ~40 % on 2
cores. llama-cpp-python does not bind the threadpool API, so it is called
through ctypes (ggml.h: struct ggml_threadpool_params, ggml_threadpool_new,
llama_attach_threadpool). The struct layout is checked against the library's
own defaults before use; if it does not match, nothing is attached.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import llama_cpp

log = logging.getLogger(__name__)
_GGML_MAX_N_THREADS = 512
_DEFAULT_POLL = 50  # ggml_threadpool_params_init's documented default


class _ThreadpoolParams(ctypes.Structure):
    _fields_ = (
        ("cpumask", ctypes.c_bool * _GGML_MAX_N_THREADS),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),  # 0 = no polling, 100 = aggressive polling
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    )


class _Ggml:
    def __init__(self) -> None:
        libdir = Path(llama_cpp.__file__).parent / "lib"
        base = ctypes.CDLL(str(libdir / "libggml-base.so"))
        cpu = ctypes.CDLL(str(libdir / "libggml-cpu.so"))
        self.params_init = base.ggml_threadpool_params_init
        self.params_init.argtypes = (ctypes.POINTER(_ThreadpoolParams), ctypes.c_int)
        self.params_init.restype = None
        self.new = cpu.ggml_threadpool_new
        self.new.argtypes = (ctypes.POINTER(_ThreadpoolParams),)
        self.new.restype = ctypes.c_void_p
        self.free = cpu.ggml_threadpool_free
        self.free.argtypes = (ctypes.c_void_p,)
        self.free.restype = None
        self.attach = llama_cpp.llama_cpp._lib.llama_attach_threadpool
        self.attach.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
        self.attach.restype = None
        self.detach = llama_cpp.llama_cpp._lib.llama_detach_threadpool
        self.detach.argtypes = (ctypes.c_void_p,)
        self.detach.restype = None


class QuietThreadpool:
    """A threadpool with a chosen polling level attached to one llama context.

    `poll` is ggml's polling level (0 sleeps at once, 100 spins hard); a
    negative value attaches nothing and keeps llama.cpp's own threads.
    Call free() on close.
    """

    def __init__(self, llama: llama_cpp.Llama, n_threads: int, poll: int = 0) -> None:
        self._ggml: _Ggml | None = None
        self._pool: int | None = None
        self._ctx = llama._ctx.ctx
        if poll < 0:
            return
        try:
            ggml = _Ggml()
        except (OSError, AttributeError) as exc:
            log.warning("llama.cpp threadpool API unavailable (%s); threads will spin", exc)
            return
        params = _ThreadpoolParams()
        ggml.params_init(ctypes.byref(params), n_threads)
        if params.n_threads != n_threads or params.poll != _DEFAULT_POLL:
            log.warning("unexpected ggml_threadpool_params layout; threads will spin")
            return
        params.poll = min(poll, 100)
        pool = ggml.new(ctypes.byref(params))
        if not pool:
            log.warning("ggml_threadpool_new failed; threads will spin")
            return
        ggml.attach(self._ctx, pool, pool)
        self._ggml, self._pool = ggml, pool

    @property
    def attached(self) -> bool:
        return self._pool is not None

    def free(self) -> None:
        if self._ggml is not None and self._pool is not None:
            self._ggml.detach(self._ctx)
            self._ggml.free(self._pool)
            self._pool = None
