"""Schema names, validation messages and provenance attrs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from mmlens.store import schema
from mmlens.store.schema import SchemaError, provenance_attrs, validate
from mmlens.store.synthetic import example_study, example_tree


def test_synthetic_trees_and_studies_validate():
    for tree in (example_tree(), example_tree(n_failures=2, with_vectors=False), example_study(chunks=4)):
        assert validate(tree) is tree


def test_groups_validate_alone_with_inferred_group():
    tree = example_tree()
    for name in ("vision", "text", "logits"):
        ds = tree[name].to_dataset()
        assert schema.infer_group(ds) == name
        validate(ds, require_provenance=False)


def test_wrong_dims_name_expected_and_found():
    ds = example_tree()["vision"].to_dataset()
    bad = ds.assign(prompt_mass=ds.prompt_mass.isel(head=0, drop=True))
    with pytest.raises(SchemaError, match=r"vision/prompt_mass: expected dims \(variant, image, layer, head\)"):
        validate(bad, require_provenance=False)
    with pytest.raises(SchemaError, match=r"found unknown \['layers'\]"):
        validate(ds.rename_dims(layer="layers"), require_provenance=False)


def test_optional_study_and_query_dims_are_accepted():
    ds = example_tree()["vision"].to_dataset()
    with_query = ds.assign(
        prompt_mass=ds.prompt_mass.expand_dims(query=[0, 1, 2]).assign_coords(
            token_role=("query", ["cls", "patch", "prompt"])
        )
    )
    validate(with_query, require_provenance=False)
    with pytest.raises(SchemaError, match="'token_role' values among"):
        validate(with_query.assign_coords(token_role=("query", ["cls", "patch", "promt"])), require_provenance=False)


def test_missing_coords_and_bad_values_are_reported():
    ds = example_tree()["vision"].to_dataset()
    with pytest.raises(SchemaError, match="expected coordinate 'label' on dim 'image'"):
        validate(ds.drop_vars("label"), require_provenance=False)
    with pytest.raises(SchemaError, match="'layer_kind' values among"):
        validate(ds.assign_coords(layer_kind=("layer", ["fresh"] * ds.sizes["layer"])), require_provenance=False)
    text = example_tree()["text"].to_dataset()
    with pytest.raises(SchemaError, match="'key_role' values among"):
        validate(text.assign_coords(key_role=["sot", "prompt", "word", "classname", "eot", "cls"]),
                 require_provenance=False)


def test_every_problem_is_listed_at_once():
    ds = example_tree()["vision"].to_dataset().drop_vars(["split", "path"])
    with pytest.raises(SchemaError) as err:
        validate(ds, require_provenance=False)
    assert "'split'" in str(err.value) and "'path'" in str(err.value)


def test_tree_level_problems():
    tree = example_tree()
    tree.attrs = {k: v for k, v in tree.attrs.items() if k != "prompt_sha256"}
    with pytest.raises(SchemaError, match=r"missing: \['prompt_sha256'\]"):
        validate(tree)
    tree = example_tree()
    tree.attrs["flag"] = True
    with pytest.raises(SchemaError, match="root attrs\\['flag'\\]: expected a string or number"):
        validate(tree)
    tree = example_tree()
    tree.attrs["mmlens_schema"] = 99
    with pytest.raises(SchemaError, match="upgrade mmlens"):
        validate(tree)
    tree = example_tree()
    tree["extras"] = xr.DataTree()
    with pytest.raises(SchemaError, match=r"found \['extras'\]"):
        validate(tree)


def test_provenance_attrs_are_storable():
    attrs = provenance_attrs(
        method_hparams={"n_ctx": 2, "depth": 9}, seed=np.int64(3), fp16=True, note=None, torch_version="2.4"
    )
    assert json.loads(attrs["method_hparams"]) == {"n_ctx": 2, "depth": 9}
    assert attrs["seed"] == 3 and type(attrs["seed"]) is int
    assert attrs["fp16"] == 1 and attrs["note"] == "none"
    assert attrs["mmlens_schema"] == schema.SCHEMA_VERSION
    assert attrs["torch_version"] == "2.4" and attrs["dataset"] == "unknown"
    assert {"mmlens_version", "xarray_version", "created"} <= set(attrs)
    assert set(schema.PROVENANCE_KEYS) <= set(attrs)
    with pytest.raises(TypeError, match="provenance attr 'model'"):
        provenance_attrs(model=object())


def test_names_are_consistent():
    assert set(schema.IDENTITY_KEYS) <= set(schema.PROVENANCE_KEYS)
    for table in schema.VARIABLES.values():
        for dims, _ in table.values():
            assert set(dims) <= set(schema.DIMS)
    assert "cls_attention" not in schema.TEXT_VARIABLES
    assert schema.TEXT_VARIABLES["prompt_mass"][0] == ("variant", "class", "layer", "head")


def test_all_query_variable_needs_its_query_dim():
    ds = example_tree()["vision"].to_dataset()
    ok = ds.assign(
        prompt_mass_all_queries=ds.prompt_mass.expand_dims(query=[0, 1], axis=-1).assign_coords(
            token_role=("query", ["cls", "prompt"])
        )
    )
    validate(ok, require_provenance=False)
    with pytest.raises(
        SchemaError, match=r"prompt_mass_all_queries: expected dims \(variant, image, layer, head, query\)"
    ):
        validate(ds.assign(prompt_mass_all_queries=ds.prompt_mass), require_provenance=False)
