"""Shared fixtures: tiny real models of every architecture, saved and loaded like a user's."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network here: never wait on a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch

from hooked_video import HookedVideoLLM
from hooked_video.zoo.tiny import BUILDERS, TinySizes, build_tiny

#: The video architectures (the image model is the baseline; the official VideoLLaMA3 layout loads
#: into the same class as video_llama_3 and has its own tests). HV_TEST_ARCHS=a,b narrows a run.
ARCHS = sorted(a for a in BUILDERS if a not in ("llava_next_image", "videollama3_official"))
if os.environ.get("HV_TEST_ARCHS"):
    ARCHS = [a for a in ARCHS if a in os.environ["HV_TEST_ARCHS"].split(",")]


@pytest.fixture(scope="session")
def tiny_paths(tmp_path_factory):
    """arch -> folder holding a saved tiny model and processor."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: build_tiny(arch, root / arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def frames():
    """Four distinct 32x32 frames (uint8)."""
    return np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="session", params=ARCHS)
def arch(request):
    return request.param


@pytest.fixture(scope="session")
def hooked(arch, tiny_paths):
    torch.manual_seed(0)
    return HookedVideoLLM.from_pretrained(tiny_paths[arch])


@pytest.fixture(scope="session")
def prompt(hooked, frames):
    return hooked.prepare(frames, "which way does the ball move ?", ["left", "right"], answer=1, num_frames=None)


@pytest.fixture(scope="session")
def deep_paths(tmp_path_factory):
    """arch -> a saved tiny model with 4 layers (room for knockout windows)."""
    root = tmp_path_factory.mktemp("deep")
    return {arch: build_tiny(arch, root / arch, TinySizes(n_layers=4), seed=1) for arch in ARCHS}


@pytest.fixture(scope="session")
def deep(arch, deep_paths):
    return HookedVideoLLM.from_pretrained(deep_paths[arch])


@pytest.fixture(scope="session")
def deep_prompt(deep, frames):
    return deep.prepare(frames, "what happens first ?", ["the ball falls", "the cup moves", "nothing"], answer=2, num_frames=None)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and two cores are shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
