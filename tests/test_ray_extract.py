"""Extraction on Ray Data (``--extract-on ray``) gives the features of the single-process
path: a real local Ray with two workers, the Keras reference engine, real cxr3 images and one
file that is no image. Ray is shut down after, leaving no process behind."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA

from xrcompare.features import FeatureExtractor, FeatureSpec
from xrcompare.ray_engine import leftover_processes
from xrcompare.ray_extract import RayExtraction, resolve

#: ResNet50 at a small input: the real base, quick on two cores.
SPEC = FeatureSpec("resnet50", 64)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list:
    """Ten real radiographs from three classes, and a garbage file fourth."""
    found = []
    for name in ("covid", "normal", "pneumonia"):
        found += sorted((DATA / "cxr3" / name).glob("*.jpg"))[:4 if name == "covid" else 3]
    assert len(found) == 10
    garbage = tmp_path_factory.mktemp("bad") / "not-an-image.jpg"
    garbage.write_bytes(b"this is not a radiograph" * 20)
    return found[:3] + [garbage] + found[3:]


def entries(folder) -> dict:
    return {path.relative_to(folder): np.load(path) for path in sorted(folder.rglob("*.npy"))}


def test_ray_features_equal_the_single_process_path(tmp_path, images, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    local_cache, ray_cache = tmp_path / "local", tmp_path / "ray"
    local = FeatureExtractor(SPEC, batch_size=4, cache_dir=local_cache).extract(images)

    events = []
    with RayExtraction(workers=2) as runner:
        extractor = FeatureExtractor(SPEC, batch_size=4, cache_dir=ray_cache, runner=runner)
        on_ray = extractor.extract(images, progress=events.append)
        temp_dir = runner.temp_dir
        assert runner.workers == 2 and runner.start_s is not None
        assert extractor.extracted_on == "ray (2 workers local)"
        again = FeatureExtractor(SPEC, batch_size=4, cache_dir=ray_cache,
                                 runner=runner).extract(images)
    assert temp_dir and leftover_processes(temp_dir) == []  # Ray is gone

    # the same rows, in the requested order, the garbage file failed with a sentence
    assert local.ok == on_ray.ok == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert (on_ray.computed, on_ray.cached) == (10, 0)
    assert [path for path, _ in on_ray.failed] == [str(images[3])]
    reason = on_ray.failed[0][1]
    assert reason == local.failed[0][1] and "not-an-image.jpg" in reason and " " in reason
    assert on_ray.features.dtype == np.float32 and on_ray.features.shape == (10, 2, 2, 2048)
    # equal up to one float16 step (batches of other sizes round the last bit differently)
    np.testing.assert_allclose(on_ray.features, local.features, rtol=2e-3, atol=2e-2)
    flat_ray = on_ray.features.reshape(10, -1)
    flat_local = local.features.reshape(10, -1)
    cosine = np.sum(flat_ray * flat_local, axis=1) / (
        np.linalg.norm(flat_ray, axis=1) * np.linalg.norm(flat_local, axis=1))
    assert cosine.min() >= 0.9999

    # the workers wrote the same cache entries (same files, same values up to float16)
    written, reference = entries(ray_cache), entries(local_cache)
    assert sorted(written) == sorted(reference) and len(written) == 10
    for name, entry in written.items():
        assert entry.dtype == np.float16 and entry.shape == reference[name].shape
        assert np.allclose(entry, reference[name], rtol=2e-3, atol=2e-2)
    assert not list(ray_cache.rglob("*.tmp.npy"))

    # progress reached the total; a second extraction reads everything from the cache
    assert events[-1]["done"] == events[-1]["total"] == 11
    assert (again.cached, again.computed) == (10, 0)
    assert np.array_equal(again.features, on_ray.features)


def test_where_features_are_computed(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve("auto") == "local" and resolve("ray") == "ray" and resolve(None) == "local"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a Ray Job on a cluster
    assert resolve("auto") == "ray" and resolve("local") == "local"
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")  # the queue's setting only
    assert resolve("auto") == "local"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    monkeypatch.setenv("XRCOMPARE_LOCAL_RAY", "1")  # a job of the app's own local Ray
    assert resolve("auto") == "local"
    with pytest.raises(ValueError, match="extract-on must be one of auto, local, ray"):
        resolve("cluster")


def test_ray_workers_need_ray_extraction():
    from xrcompare.config import TrainConfig

    config = TrainConfig(data=DATA / "cxr3", backbones=["resnet50"], extract_on="local",
                         ray_workers=2)
    with pytest.raises(ValueError, match="--ray-workers sizes the Ray workers"):
        config.validate()
    config.extract_on = "ray"
    config.validate()
    assert TrainConfig.from_json(config.to_json()).ray_workers == 2
