"""Feature extraction on Ray Data: the pending part of an extraction, spread over workers.

:meth:`xrcompare.features.FeatureExtractor.extract` reads the cache, decides which (image,
view) pairs are missing and assembles the result; with a :class:`RayExtraction` as its
``runner`` it hands those pending pairs to Ray Data instead of computing them itself. The
rows (position, path, content hash, view) become a dataset; ``map_batches`` runs them
through a pool of actors (:class:`BaseWorker`), each of which builds the frozen base once
through the same :func:`xrcompare.inference_engine.make_engine` (so the same engine and
precision as in this process), prepares each batch with the extractor's own
``_prepare_batch`` (the one image-to-tensor path), runs the base, writes the cache entries
itself (atomically, with the extractor's ``_store``) and returns positions and float16
features. The driver streams those batches back (never the whole dataset at once).

Where Ray runs: the cluster this process belongs to when ``$RAY_ADDRESS`` names one (a
training process submitted as a Ray Job: Ray sets ``$RAY_ADDRESS`` to its cluster), else a
small Ray started in this process for the extraction and shut down after it. The workers
read the images by path and write the cache folder, so on a cluster both must be reachable
at the same path from every node.

This is not ``--engine ray``: ``--engine`` names the inference engine (Keras or OpenVINO)
that computes the base; Ray only decides where that engine runs (``--extract-on``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Where features are computed: ``auto`` (Ray on a cluster, else this process), ``local``
#: (this process) or ``ray`` (Ray Data workers; a local Ray is started when no cluster is).
EXTRACT_ON_CHOICES = ("auto", "local", "ray")
#: Set (to ``1``) in the training jobs of the app's own local Ray
#: (:func:`xrcompare.ray_engine.submit`): Ray sets ``$RAY_ADDRESS`` in every job, but a
#: one-machine Ray is no cluster to spread extraction over, so ``auto`` stays local there.
LOCAL_RAY_VARIABLE = "XRCOMPARE_LOCAL_RAY"
#: The object store of a Ray started here: a few batches of features in flight at a time.
OBJECT_STORE_BYTES = 256 * 1024 * 1024


class RayExtractError(RuntimeError):
    """Ray cannot run the extraction, with one readable line."""


def on_cluster() -> bool:
    """Whether this process belongs to a Ray cluster that is not the app's local Ray: Ray
    sets ``$RAY_ADDRESS`` to the cluster's own address in every job. A dashboard URL
    (``http://head:8265``, how the app is pointed at a cluster for its queue) is not enough:
    this process may not be on a node of that cluster."""
    address = os.environ.get("RAY_ADDRESS", "").strip()
    return (bool(address) and not address.startswith(("http://", "https://"))
            and os.environ.get(LOCAL_RAY_VARIABLE, "") != "1")


def resolve(extract_on: str | None) -> str:
    """``local`` or ``ray`` for the choice ``extract_on`` (``auto``: ray on a cluster)."""
    choice = (extract_on or "auto").strip().lower()
    if choice not in EXTRACT_ON_CHOICES:
        raise ValueError(f"extract-on must be one of {', '.join(EXTRACT_ON_CHOICES)}, "
                         f"got {extract_on!r}")
    if choice == "auto":
        return "ray" if on_cluster() else "local"
    return choice


def local_workers() -> int:
    """Workers of a Ray started here: one per two cores (1 on 2 cores)."""
    return max(1, (os.cpu_count() or 1) // 2)


def runner_for(extract_on: str | None, workers: int | None = None) -> RayExtraction | None:
    """The runner :class:`xrcompare.features.FeatureExtractor` takes for ``extract_on``
    (None: this process computes the features)."""
    return RayExtraction(workers) if resolve(extract_on) == "ray" else None


class BaseWorker:
    """One Ray Data actor: the frozen base, built once, run over batches of rows."""

    def __init__(self, spec, cache_root: str, batch_size: int):
        from xrcompare.features import FeatureExtractor

        self.extractor = FeatureExtractor(spec, batch_size=batch_size,
                                          cache_dir=Path(cache_root))
        self.shape = tuple(self.extractor.engine.output_shape)  # built here, once

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from xrcompare.features import CACHE_DTYPE, CacheWriteError
        from xrcompare.imaging import ImageError, read_bytes

        extractor = self.extractor
        jobs, failed = [], []
        for position, path, digest, view in zip(batch["position"], batch["path"],
                                                batch["digest"], batch["view"], strict=True):
            position, path, digest, view = int(position), str(path), str(digest), int(view)
            try:
                data = read_bytes(path)
            except ImageError as error:
                failed.append((position, str(error)))
                continue
            if hashlib.sha256(data).hexdigest() != digest:
                failed.append((position, f"{Path(path).name} changed while its features were "
                                         "extracted"))
                continue
            jobs.append((position, data, Path(path).name, digest, view))
        inputs, kept, bad = extractor._prepare_batch(jobs)
        failed += bad
        output = (extractor.engine.predict(inputs).astype(CACHE_DTYPE, copy=False)
                  if inputs is not None
                  else np.zeros((0, *self.shape), CACHE_DTYPE))
        note = ""
        try:
            extractor._store_batch(kept, output)
        except CacheWriteError as error:  # computed all the same: the run goes on
            note = str(error)
        count = len(kept) + len(failed)
        features = np.zeros((count, *output.shape[1:]), CACHE_DTYPE)
        features[:len(kept)] = output
        return {"position": np.array([p for p, _, _ in kept] + [p for p, _ in failed],
                                     dtype=np.int64),
                "features": features,
                "error": np.array([""] * len(kept) + [reason for _, reason in failed],
                                  dtype=object),
                "note": np.array([note] + [""] * (count - 1), dtype=object)}


@dataclass
class Batch:
    """One batch back from the workers: features (float16) of ``positions``, in that order;
    the (position, reason) pairs that failed; a cache-write problem, if any."""

    positions: list[int]
    features: np.ndarray
    failed: list[tuple[int, str]]
    note: str


class RayExtraction:
    """Runs pending extraction work on Ray Data; Ray is joined or started on first use and
    left (a Ray started here is shut down) by :meth:`close`."""

    def __init__(self, workers: int | None = None):
        if workers is not None and int(workers) < 1:
            raise ValueError(f"Ray workers must be 1 or more, got {workers}")
        self.requested = int(workers) if workers else None
        self.workers = self.requested or 0
        self.gpus_per_worker = 0
        self.start_s: float | None = None
        self.where = ""
        self._started_here = False
        self._temp_dir: str | None = None

    # ----------------------------------------------------------------- Ray itself

    @property
    def label(self) -> str:
        """How features were extracted, for ``run.json``: ``"ray (2 workers)"``."""
        if not self.where:
            workers = self.requested or local_workers()
            return f"ray ({workers} worker{'s' if workers != 1 else ''})"
        gpu = ", 1 GPU each" if self.gpus_per_worker else ""
        plural = "s" if self.workers != 1 else ""
        return f"ray ({self.workers} worker{plural}{gpu}{self.where})"

    @property
    def temp_dir(self) -> str | None:
        """The temporary folder of a Ray started here (its processes name it)."""
        return self._temp_dir

    def start(self) -> None:
        """Join the cluster (``$RAY_ADDRESS``) or a Ray already initialised in this process,
        else start a local Ray with one CPU per worker."""
        import ray

        if ray.is_initialized() or self._started_here:
            if not self.where:
                self.where = " in this process's Ray"
            self._size()
            return
        started = time.perf_counter()
        address = os.environ.get("RAY_ADDRESS", "").strip()
        if address:
            # A Ray Job's $RAY_ADDRESS is its cluster's; a dashboard URL (how the app is
            # pointed at a cluster) only works from a node of that cluster.
            target = "auto" if address.startswith(("http://", "https://")) else address
            try:
                ray.init(address=target, logging_level="ERROR", log_to_driver=False)
            except Exception as error:
                raise RayExtractError(
                    f"cannot join the Ray cluster at {address} for extraction "
                    f"({' '.join(str(error).split())[:200]}); run the training as a Ray Job "
                    "(the app's queue does) or use --extract-on local") from error
            self.where = f" on the cluster at {address}"
        else:
            self.workers = self.requested or local_workers()
            # short: Ray's socket paths must stay under 107 characters
            self._temp_dir = tempfile.mkdtemp(prefix="xr-rd-", dir="/tmp"
                                              if Path("/tmp").is_dir() else None)
            saved = os.environ.pop("RAY_ADDRESS", None)
            try:
                ray.init(num_cpus=self.workers, num_gpus=0, include_dashboard=False,
                         object_store_memory=OBJECT_STORE_BYTES, _temp_dir=self._temp_dir,
                         logging_level="ERROR", log_to_driver=False,
                         configure_logging=False)
            except Exception:
                shutil.rmtree(self._temp_dir, ignore_errors=True)
                raise
            finally:
                if saved is not None:
                    os.environ["RAY_ADDRESS"] = saved
            self._started_here = True
            self.where = " local"
        self.start_s = time.perf_counter() - started
        self._size()

    def _size(self) -> None:
        """Workers and what each asks for: a GPU each where the cluster has free GPUs, else a
        CPU each; by default as many as those free resources allow."""
        import ray

        free = ray.available_resources()
        gpus, cpus = int(free.get("GPU", 0)), int(free.get("CPU", 0))
        self.gpus_per_worker = 1 if gpus >= 1 else 0
        room = gpus if gpus >= 1 else cpus
        if room < 1:
            raise RayExtractError("the Ray cluster has no free CPU or GPU for an extraction "
                                  "worker; use --extract-on local")
        if self._started_here:
            return
        self.workers = self.requested or (gpus if gpus >= 1 else max(1, cpus // 2))

    def close(self) -> None:
        """Shut down a Ray started here (and wait for its processes); a joined one is left."""
        if not self._started_here:
            return
        import ray

        ray.shutdown()
        self._started_here = False
        if self._temp_dir:
            from xrcompare.ray_engine import leftover_processes

            deadline = time.monotonic() + 10.0
            while leftover_processes(self._temp_dir) and time.monotonic() < deadline:
                time.sleep(0.1)
            shutil.rmtree(self._temp_dir, ignore_errors=True)

    def __enter__(self) -> RayExtraction:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------- the work

    def run(self, extractor, rows: list[tuple[int, str, str, int]]) -> Iterator[Batch]:
        """Compute ``rows`` (position, path, content hash, view) with ``extractor``'s spec and
        cache; yields each batch as the workers return it (in no particular order)."""
        if not rows:
            return
        import ray.data

        self.start()
        from xrcompare.ray_engine import job_environment

        # Ray Data's own progress lines would interleave with the run's progress
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        with contextlib.suppress(AttributeError):
            context.print_on_execution_start = False
        size = extractor.batch_size
        dataset = ray.data.from_items(
            [{"position": position, "path": str(path), "digest": digest, "view": view}
             for position, path, digest, view in rows],
            override_num_blocks=max(1, -(-len(rows) // size)))
        resources = ({"num_gpus": self.gpus_per_worker} if self.gpus_per_worker
                     else {"num_cpus": 1})
        mapped = dataset.map_batches(
            BaseWorker, batch_size=size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.workers),
            fn_constructor_kwargs={"spec": extractor.spec,
                                   "cache_root": str(extractor.cache_root),
                                   "batch_size": size},
            runtime_env={"env_vars": job_environment()}, **resources)
        for batch in mapped.iter_batches(batch_size=None, batch_format="numpy"):
            errors = [str(error) for error in batch["error"]]
            positions = [int(position) for position in batch["position"]]
            good = [row for row, error in enumerate(errors) if not error]
            yield Batch(positions=[positions[row] for row in good],
                        features=np.asarray(batch["features"])[good],
                        failed=[(positions[row], error) for row, error in enumerate(errors)
                                if error],
                        note=next((str(note) for note in batch["note"] if note), ""))
