"""Pack resolution: metadata, core, extension map, set cover, preemption, patterns, prefixes, overrides."""

from __future__ import annotations

import copy

from analysis.helpers import MANAGER, TEMPLATE, ui_node, ui_workflow
from comfyfleet.analysis import Overrides, analyze_data
from comfyfleet.analysis.index import KnowledgeIndex, default_index
from comfyfleet.analysis.index_build import build_index


def api(*class_types: str) -> dict:
    return {str(i): {"class_type": c, "inputs": {}} for i, c in enumerate(class_types, 1)}


def packs(manifest) -> dict[str, tuple[list[str], str]]:
    return {p.repo.rsplit("/", 1)[-1]: (p.provides, p.resolved_by) for p in manifest.custom_nodes}


def test_unique_class_resolves_through_extension_map(small_index: KnowledgeIndex) -> None:
    manifest = analyze_data(api("OnlyBig", "KSampler"), "wf", "wf", index=small_index)
    assert packs(manifest) == {"big-pack": (["OnlyBig"], "extension_map")}
    assert manifest.core_classes == ["KSampler"]
    assert manifest.custom_nodes[0].version is None


def test_ambiguous_class_joins_a_pack_the_workflow_already_needs(small_index: KnowledgeIndex) -> None:
    # "Shared" is listed by big (50 stars), small (900) and a fork; big is needed anyway.
    manifest = analyze_data(api("OnlyBig", "Shared"), "wf", "wf", index=small_index)
    assert packs(manifest) == {"big-pack": (["OnlyBig", "Shared"], "extension_map")}


def test_set_cover_prefers_one_pack_for_several_ambiguous_classes(small_index: KnowledgeIndex) -> None:
    # Shared and Twin: big, small and the fork each list both -> one pack, the most starred.
    manifest = analyze_data(api("Shared", "Twin"), "wf", "wf", index=small_index)
    assert packs(manifest) == {"small-pack": (["Shared", "Twin"], "set_cover")}


def test_set_cover_minimizes_pack_count_before_popularity(small_index: KnowledgeIndex) -> None:
    # OnlySmall forces small-pack, which also covers Twin: no second pack.
    manifest = analyze_data(api("Twin", "OnlySmall", "OnlyBig"), "wf", "wf", index=small_index)
    assert packs(manifest) == {
        "small-pack": (["OnlySmall", "Twin"], "extension_map"),
        "big-pack": (["OnlyBig"], "extension_map"),
    }


def test_preemption_beats_popularity(small_index: KnowledgeIndex) -> None:
    manifest = analyze_data(api("Claimed"), "wf", "wf", index=small_index)
    assert packs(manifest) == {"claimer": (["Claimed"], "set_cover")}


def test_nodename_pattern_resolves_unlisted_names(small_index: KnowledgeIndex) -> None:
    manifest = analyze_data(api("Brand New Thing (zz)"), "wf", "wf", index=small_index)
    assert packs(manifest) == {"suffix-pack": (["Brand New Thing (zz)"], "pattern")}


def test_unlisted_class_with_a_popular_packs_prefix(small_index: KnowledgeIndex) -> None:
    manifest = analyze_data(api("FancyGlow"), "wf", "wf", index=small_index)
    assert packs(manifest) == {"FancyNodes": (["FancyGlow"], "name_guess")}


def test_unlisted_class_with_a_packs_name_tag(small_index: KnowledgeIndex) -> None:
    # "...GK" is on two classes of one pack only: its tag.
    manifest = analyze_data(api("ResizeGK"), "wf", "wf", index=small_index)
    assert packs(manifest) == {"TaggedPack": (["ResizeGK"], "name_guess")}


def test_unlisted_class_named_after_a_pack_repo(small_index: KnowledgeIndex) -> None:
    manifest = analyze_data(api("Make Thing (WidgetWorks)", "WidgetWorks"), "wf", "wf", index=small_index)
    assert packs(manifest) == {
        "ComfyUI-Widget-Works": (["Make Thing (WidgetWorks)", "WidgetWorks"], "name_guess")
    }


def test_prefix_guesses_need_whole_words_and_real_tags(small_index: KnowledgeIndex) -> None:
    # "Deno" is not the word "Denoise"; "(Nobody)" is a tag no pack has, whatever "Save Image" matches.
    manifest = analyze_data(api("DenoAudioThing", "Save Image (Nobody)"), "wf", "wf", index=small_index)
    assert manifest.custom_nodes == []
    assert sorted(u.class_type for u in manifest.unresolved.nodes) == [
        "DenoAudioThing",
        "Save Image (Nobody)",
    ]


def test_unknown_class_is_unresolved_with_a_reason(small_index: KnowledgeIndex) -> None:
    manifest = analyze_data(api("TotallyUnknownNode", "TotallyUnknownNode"), "wf", "wf", index=small_index)
    assert manifest.custom_nodes == []
    [node] = manifest.unresolved.nodes
    assert node.class_type == "TotallyUnknownNode" and node.node_ids == ["1", "2"]
    assert "overrides.yaml" in node.reason


def test_core_classes_come_from_source_manager_and_templates(small_index: KnowledgeIndex) -> None:
    manifest = analyze_data(
        api("VAELoader", "KSampler", "CoreOnlyInTemplates"), "wf", "wf", index=small_index
    )
    assert manifest.core_classes == ["CoreOnlyInTemplates", "KSampler", "VAELoader"]
    assert manifest.custom_nodes == [] and not manifest.unresolved


def test_node_metadata_wins_over_the_map(small_index: KnowledgeIndex) -> None:
    workflow = ui_workflow(
        ui_node(1, "Shared", props={"cnr_id": "big", "ver": "2.0.1"}),
        ui_node(2, "OnlySmall", props={"aux_id": "bob/small-pack", "ver": "0123abcd"}),
        ui_node(3, "OnlyBig", props={"cnr_id": "comfy-core"}),
    )
    manifest = analyze_data(workflow, "wf", "wf", index=small_index)
    by_repo = {p.repo: p for p in manifest.custom_nodes}
    assert by_repo["https://github.com/alice/big-pack"].version == "2.0.1"
    assert by_repo["https://github.com/alice/big-pack"].resolved_by == "node_metadata"
    assert by_repo["https://github.com/bob/small-pack"].version == "0123abcd"
    assert manifest.core_classes == ["OnlyBig"]


def test_metadata_for_a_pack_not_in_the_index_is_trusted_only_when_listed(
    small_index: KnowledgeIndex,
) -> None:
    workflow = ui_workflow(
        ui_node(1, "Whatever", props={"cnr_id": "brand-new", "aux_id": "zoe/brand-new", "ver": "1.0.0"})
    )
    manifest = analyze_data(workflow, "wf", "wf", index=small_index)
    assert manifest.custom_nodes == []
    [unresolved] = manifest.unresolved.nodes
    assert unresolved.class_type == "Whatever" and "- https://github.com/zoe/brand-new" in unresolved.reason
    trusted = Overrides.model_validate({"trusted_repos": ["https://github.com/zoe/brand-new"]})
    [pack] = analyze_data(workflow, "wf", "wf", trusted, index=small_index).custom_nodes
    assert (pack.id, pack.repo, pack.version) == ("brand-new", "https://github.com/zoe/brand-new", "1.0.0")


def test_override_beats_everything(small_index: KnowledgeIndex) -> None:
    overrides = Overrides.model_validate(
        {"nodes": {"Shared": {"repo": "https://github.com/me/mine.git", "version": 3}}}
    )
    manifest = analyze_data(api("Shared", "TotallyUnknownNode"), "wf", "wf", overrides, index=small_index)
    assert [(p.repo, p.version, p.resolved_by, p.id) for p in manifest.custom_nodes] == [
        ("https://github.com/me/mine", "3", "override", "mine")
    ]


def test_real_index_resolves_well_known_ambiguities() -> None:
    """The shipped index: preemptions and popularity pick the packs people mean."""
    index = default_index()
    manifest = analyze_data(
        api("DWPreprocessor", "Display Any (rgthree)", "KSampler"), "wf", "wf", index=index
    )
    repos = {p.repo for p in manifest.custom_nodes}
    assert repos == {
        "https://github.com/Fannovel16/comfyui_controlnet_aux",
        "https://github.com/rgthree/rgthree-comfy",
    }
    assert manifest.core_classes == ["KSampler"]


def test_unknown_registry_id_falls_back_to_the_map(small_index: KnowledgeIndex) -> None:
    workflow = ui_workflow(
        ui_node(1, "OnlyBig", props={"cnr_id": "renamed-on-registry", "ver": "9.9.9"}),
        ui_node(2, "NeverSeenAnywhere", props={"cnr_id": "mystery-pack", "ver": "1.0.0"}),
    )
    manifest = analyze_data(workflow, "wf", "wf", index=small_index)
    # The version belongs to an id we cannot map, so it is not carried over.
    assert [(p.repo, p.version) for p in manifest.custom_nodes] == [
        ("https://github.com/alice/big-pack", None)
    ]
    [node] = manifest.unresolved.nodes
    assert node.class_type == "NeverSeenAnywhere" and "'mystery-pack'" in node.reason


def _index_with(extra_packs: dict[str, list[str]], stars: dict[str, int]) -> KnowledgeIndex:
    """The small test index plus some packs, built by the real builder."""
    manager = copy.deepcopy(MANAGER)
    for repo, names in extra_packs.items():
        manager["extension-node-map.json"][repo] = [names, {}]
    manager["github-stats.json"].update({repo: {"stars": n} for repo, n in stars.items()})
    return KnowledgeIndex(build_index(manager, [TEMPLATE], {}, {"VAELoader"}, {}))


def test_prefix_many_packs_share_is_no_evidence_for_an_unneeded_pack() -> None:
    # "Fancy..." is FancyNodes' own prefix until another pack has more classes under it.
    shared = _index_with(
        {"https://github.com/zed/GlowPack": ["FancyGlowA", "FancyGlowB", "FancyGlowC", "FancyGlowD"]},
        {"https://github.com/zed/GlowPack": 10},
    )
    manifest = analyze_data(api("FancyZoom"), "wf", "wf", index=shared)
    assert manifest.custom_nodes == []
    assert [u.class_type for u in manifest.unresolved.nodes] == ["FancyZoom"]
    # A pack the workflow needs anyway still takes its prefix's new classes.
    manifest = analyze_data(api("FancyZoom", "FancyBlur"), "wf", "wf", index=shared)
    assert packs(manifest) == {"FancyNodes": (["FancyBlur", "FancyZoom"], "extension_map")}


def test_registry_id_matches_repo_name_without_comfyui_affix_or_punctuation(
    small_index: KnowledgeIndex,
) -> None:
    # Registry ids are often the repo name minus "ComfyUI-" ("listhelper" for ComfyUI-ListHelper).
    workflow = ui_workflow(ui_node(1, "NotInTheMap", props={"cnr_id": "widgetworks", "ver": "1.3.1"}))
    manifest = analyze_data(workflow, "wf", "wf", index=small_index)
    assert [(p.repo, p.version, p.resolved_by) for p in manifest.custom_nodes] == [
        ("https://github.com/ivan/ComfyUI-Widget-Works", "1.3.1", "node_metadata")
    ]


def test_registry_only_packs_resolve_by_their_curated_pattern(small_index: KnowledgeIndex) -> None:
    # kijai publishes these on the Comfy Registry only; the Manager's git lists lack them.
    manifest = analyze_data(api("MMAudioSampler", "Hy3DVAELoader", "KSampler"), "wf", "wf", index=small_index)
    assert {p.repo: (p.provides, p.resolved_by) for p in manifest.custom_nodes} == {
        "https://github.com/kijai/ComfyUI-Hunyuan3DWrapper": (["Hy3DVAELoader"], "pattern"),
        "https://github.com/kijai/ComfyUI-MMAudio": (["MMAudioSampler"], "pattern"),
    }


def test_manager_class_list_replaces_the_curated_pattern_once_it_knows_the_pack() -> None:
    repo = "https://github.com/kijai/ComfyUI-MMAudio"
    index = _index_with({repo: ["MMAudioSampler"]}, {repo: 300})
    assert sum(p.repo == repo for p in index.packs) == 1
    assert index.packs_by_pattern("MMAudioSomethingNew") == []
    manifest = analyze_data(api("MMAudioSampler"), "wf", "wf", index=index)
    assert [(p.repo, p.resolved_by) for p in manifest.custom_nodes] == [(repo, "extension_map")]


def test_listed_prefix_beats_a_repo_named_like_the_first_word() -> None:
    # "Denoise" is DenoiseTools' prefix (3 listed classes) and also some repo's name.
    index = _index_with({"https://github.com/zed/ComfyUI_Denoise": ["Unrelated"]}, {})
    manifest = analyze_data(api("DenoiseHarder"), "wf", "wf", index=index)
    assert packs(manifest) == {"DenoiseTools": (["DenoiseHarder"], "name_guess")}
    # Without prefix evidence the repo name still serves.
    manifest = analyze_data(api("WidgetworksBlur"), "wf", "wf", index=index)
    assert packs(manifest) == {"ComfyUI-Widget-Works": (["WidgetworksBlur"], "name_guess")}


def test_a_single_shared_name_prefix_is_no_evidence() -> None:
    """'BoundingBoxToCenter': two packs each have one class starting 'BoundingBox'; that names neither."""
    manifest = analyze_data(api("BoundingBoxToCenter", "KSampler"), "wf", "wf", index=default_index())
    assert manifest.custom_nodes == []
    assert [n.class_type for n in manifest.unresolved.nodes] == ["BoundingBoxToCenter"]


def test_a_fork_and_its_original_are_one_pack_the_cnr_id_one() -> None:
    """Both would be custom_nodes/ComfyUI-KJNodes: as in ComfyUI-Manager, the cnr_id names the one installed."""
    workflow = ui_workflow(
        ui_node(1, "ImageResizeKJv2", props={"cnr_id": "comfyui-kjnodes", "ver": "1.1.7"}),
        ui_node(2, "ForkOnlyKJThing", props={"aux_id": "me/ComfyUI-KJNodes", "ver": "0123abcd"}),
    )
    trusted = Overrides.model_validate({"trusted_repos": ["https://github.com/me/ComfyUI-KJNodes"]})
    [pack] = analyze_data(workflow, "wf", "wf", trusted, index=default_index()).custom_nodes
    assert (pack.repo, pack.version) == ("https://github.com/kijai/ComfyUI-KJNodes", "1.1.7")
    assert pack.provides == ["ForkOnlyKJThing", "ImageResizeKJv2"]
