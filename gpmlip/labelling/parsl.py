"""Parsl as a ``concurrent.futures.Executor`` for :func:`gpmlip.labelling.label_queue`.

Parsl's ``AppFuture`` subclasses :class:`concurrent.futures.Future`, so the futures of a
``python_app`` work with ``concurrent.futures.wait`` and ``as_completed``; :class:`ParslExecutor`
only adds the ``submit``/``shutdown`` interface around a private ``DataFlowKernel``.  Parsl is
optional: ``pip install 'gpmlip[parsl]'``.

Workers receive the labeller and the structure (serialised by Parsl) and return plain numbers;
they never open the queue file, so they need gpmlip and the labeller's code installed, but no
access to the queue's file system.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import sys
from pathlib import Path

from gpmlip.errors import SettingsError

log = logging.getLogger(__name__)


def _parsl():
    try:
        import parsl
    except ImportError as err:
        raise SettingsError("this needs Parsl: pip install 'gpmlip[parsl]' (or pip install "
                            "parsl)") from err
    return parsl


class ParslExecutor(cf.Executor):
    """A ``concurrent.futures.Executor`` that runs calls as Parsl python apps.

    Parameters
    ----------
    config : parsl.config.Config
        E.g. from :func:`local_config` or :func:`slurm_config`.  A new ``DataFlowKernel`` is
        started for it (the global ``parsl.load`` is not used) and cleaned up by
        :meth:`shutdown`.
    """

    def __init__(self, config) -> None:
        _parsl()
        from parsl.dataflow.dflow import DataFlowKernel

        self._dfk = DataFlowKernel(config)
        self._apps: dict = {}
        self._closed = False
        self._watchdog = _watch_interchanges(config)

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        """Run ``fn(*args, **kwargs)`` on a Parsl worker; ``fn`` must be importable there."""
        if self._closed:
            raise RuntimeError("cannot submit to a ParslExecutor after shutdown")
        from parsl.app.app import python_app

        app = self._apps.get(fn)
        if app is None:
            app = self._apps[fn] = python_app(fn, data_flow_kernel=self._dfk)
        return app(*args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the DataFlowKernel and its executors (blocks or jobs are cancelled)."""
        if not self._closed:
            self._closed = True
            self._dfk.cleanup()
            if self._watchdog is not None:
                self._watchdog.kill()
                self._watchdog.wait()


WATCHDOG = ("import sys\nfrom gpmlip.parallel import end_when_gone\n"
            "end_when_gone(int(sys.argv[1]), [int(p) for p in sys.argv[2:]])\n")
"""A process of its own session that outlives a coordinator killed with SIGKILL and then ends
its Parsl interchanges (:func:`gpmlip.parallel.end_when_gone`): Parsl starts each as a child
that does not notice its parent's death, and its workers stop only when the interchange's
heartbeats do (10 s in :func:`local_config`)."""


def _watch_interchanges(config):
    """Start :data:`WATCHDOG` for the interchange processes of ``config``'s executors (None
    when there are none, e.g. a thread pool)."""
    import subprocess

    pids = [ex.interchange_proc.pid for ex in config.executors
            if getattr(ex, "interchange_proc", None) is not None]
    if not pids:
        return None
    return subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), *map(str, pids)],
                            start_new_session=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _bin(name: str) -> str:
    """Full path of a Parsl script in this Python's environment (found even off PATH)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def local_config(max_workers: int = 2, *, kind: str = "htex", run_dir=None):
    """A Parsl config on this machine.

    Parameters
    ----------
    max_workers : int
        Worker processes (``"htex"``) or threads (``"threads"``).
    kind : {"htex", "threads"}
        ``"htex"``: a ``HighThroughputExecutor`` with a ``LocalProvider``, the same code path as
        on a cluster (separate worker processes, arguments serialised); takes a few seconds to
        start.  ``"threads"``: Parsl's ``ThreadPoolExecutor``, instant, in this process.
    run_dir : str or Path, optional
        Where Parsl writes its logs (default ``./runinfo``).
    """
    _parsl()
    from parsl.config import Config

    if max_workers < 1:
        raise SettingsError(f"max_workers={max_workers}: use 1 or more")
    run_dir = str(run_dir or "runinfo")
    if kind == "threads":
        from parsl.executors import ThreadPoolExecutor

        return Config(executors=[ThreadPoolExecutor(label="local_threads",
                                                    max_threads=max_workers)],
                      run_dir=run_dir, initialize_logging=False)
    if kind != "htex":
        raise SettingsError(f"kind={kind!r}: use 'htex' or 'threads'")
    from parsl.executors import HighThroughputExecutor
    from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD
    from parsl.providers import LocalProvider

    bindir = os.path.dirname(sys.executable)
    htex = HighThroughputExecutor(
        label="local_htex", address="127.0.0.1", max_workers_per_node=max_workers,
        cores_per_worker=1, heartbeat_period=2, heartbeat_threshold=10,
        launch_cmd=DEFAULT_LAUNCH_CMD.replace("process_worker_pool.py",
                                              _bin("process_worker_pool.py"), 1),
        interchange_launch_cmd=[_bin("interchange.py")],
        provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1,
                               worker_init=f"export PATH={bindir}:$PATH"))
    return Config(executors=[htex], run_dir=run_dir, strategy="none", initialize_logging=False)


def slurm_config(*, partition: str, walltime: str = "01:00:00", nodes_per_block: int = 1,
                 max_blocks: int = 1, cores_per_node: int | None = None,
                 cores_per_worker: float = 1.0, max_workers_per_node: int | None = None,
                 account: str | None = None, qos: str | None = None,
                 worker_init: str = "", scheduler_options: str = "",
                 address: str | None = None, run_dir=None):
    """A Parsl config that runs workers in Slurm jobs (``HighThroughputExecutor`` + ``SlurmProvider``).

    Not runnable without a Slurm cluster.  Each Slurm job ("block") holds ``nodes_per_block``
    nodes; ``srun`` starts one worker pool per node, each with ``max_workers_per_node``
    workers (default: cores / ``cores_per_worker``).  Parsl submits between 0 and
    ``max_blocks`` jobs as work arrives and cancels idle ones.

    Parameters
    ----------
    partition : str
        Slurm partition (``#SBATCH --partition``).
    walltime : str
        ``HH:MM:SS`` per job; rows in flight when a job ends are taken over after their lease.
    nodes_per_block, max_blocks : int
    cores_per_node : int, optional
        Requested with ``--cpus-per-task`` style options by Parsl when given.
    cores_per_worker : float
        Cores one labeller call uses (e.g. GPAW's OpenMP threads).
    max_workers_per_node : int, optional
    account, qos : str, optional
        ``--account`` and ``--qos``.
    worker_init : str
        Shell lines run before the workers start, e.g. ``"module load gpaw; source
        ~/venvs/gpmlip/bin/activate; export OMP_NUM_THREADS=4"``; the environment must have
        gpmlip and Parsl at the same versions as the coordinator.
    scheduler_options : str
        Extra ``#SBATCH`` lines.
    address : str, optional
        Address of the coordinating (login) node that compute nodes can reach, e.g.
        ``parsl.addresses.address_by_interface("ib0")``; default: Parsl probes all of them.
    run_dir : str or Path, optional
        Parsl logs and submit scripts (default ``./runinfo``).
    """
    _parsl()
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.launchers import SrunLauncher
    from parsl.providers import SlurmProvider

    provider = SlurmProvider(
        partition=partition, account=account, qos=qos, nodes_per_block=nodes_per_block,
        cores_per_node=cores_per_node, init_blocks=0, min_blocks=0, max_blocks=max_blocks,
        walltime=walltime, worker_init=worker_init, scheduler_options=scheduler_options,
        launcher=SrunLauncher())
    kwargs = {} if address is None else {"address": address}
    htex = HighThroughputExecutor(label="slurm_htex", cores_per_worker=cores_per_worker,
                                  max_workers_per_node=max_workers_per_node, provider=provider,
                                  **kwargs)
    return Config(executors=[htex], run_dir=str(run_dir or "runinfo"), strategy="simple")


def parsl_executor(config=None) -> ParslExecutor:
    """A :class:`ParslExecutor` for ``config`` (default :func:`local_config` with 2 workers)."""
    return ParslExecutor(config if config is not None else local_config())
