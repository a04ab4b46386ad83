"""Workflow analysis: ComfyUI workflow JSON in, dependency manifest (packs, models) out.

Public API::

    analyze_file(path, overrides=None) -> Manifest
    analyze_paths([paths]) -> AnalysisResult(manifests, lock, errors)
    load_overrides(path) -> Overrides
"""

from comfyfleet.analysis.analyzer import AnalysisResult, analyze_data, analyze_file, analyze_paths
from comfyfleet.analysis.overrides import Overrides, load_overrides

__all__ = ["AnalysisResult", "Overrides", "analyze_data", "analyze_file", "analyze_paths", "load_overrides"]
