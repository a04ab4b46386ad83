"""Corpus check: metadata-stripped templates must still yield their models' folders and URLs."""

from __future__ import annotations

import time

import pytest

from comfyfleet.analysis import analyze_data
from comfyfleet.analysis.corpus import stripped_corpus, templates_dir
from comfyfleet.analysis.index import default_index

pytestmark = pytest.mark.corpus


def test_stripped_templates_recover_model_folders_and_urls() -> None:
    directory = templates_dir()
    assert directory is not None, "comfyui-workflow-templates-json (a test dependency) is not installed"
    index = default_index()
    started = time.perf_counter()
    workflows = total = folder_ok = url_ok = 0
    misses: list[str] = []
    for item in stripped_corpus(directory):
        workflows += 1
        manifest = analyze_data(item.data, item.name, item.name, index=index)
        got = {(m.filename, m.folder): m for m in manifest.models}
        for name, (folder, url) in item.expected.items():
            total += 1
            ref = got.get((name.replace("\\", "/"), folder))
            if ref is None:
                misses.append(f"{item.name}: {name} -> {folder}")
                continue
            folder_ok += 1
            url_ok += ref.url == url
    elapsed = time.perf_counter() - started
    assert workflows > 500 and total > 800
    assert folder_ok / total >= 0.99, misses[:20]
    assert url_ok / total >= 0.95
    assert elapsed < 60
