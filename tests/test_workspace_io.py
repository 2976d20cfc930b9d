"""Workspace input/output: schema validation messages, JSON loading, patches and patchsets,
write/read round trips, and the errors raised for inconsistent models."""

from __future__ import annotations

import copy
import gzip
import io
import json

import jsonpatch
import numpy as np
import pyhf
import pytest

import diffhep
from diffhep.errors import DiffhepError, SchemaError
from diffhep.stats.workspace import Workspace, load_json, load_patch, validate
from specs import lumi_parameter, measurement

pyhf.set_backend("numpy")


def make_workspace() -> dict:
    """A two-channel workspace with every modifier type; channels deliberately not sorted."""
    return {
        "version": "1.0.0",
        "channels": [
            {
                "name": "SR",
                "samples": [
                    {
                        "name": "signal",
                        "data": [5.0, 8.0, 2.0],
                        "modifiers": [
                            {"name": "mu", "type": "normfactor", "data": None},
                            {"name": "lumi", "type": "lumi", "data": None},
                            {
                                "name": "sig_theory",
                                "type": "normsys",
                                "data": {"lo": 0.9, "hi": 1.1},
                            },
                        ],
                    },
                    {
                        "name": "bkg",
                        "data": [40.0, 30.0, 12.0],
                        "modifiers": [
                            {"name": "lumi", "type": "lumi", "data": None},
                            {
                                "name": "jes",
                                "type": "histosys",
                                "data": {
                                    "lo_data": [37.0, 29.0, 11.0],
                                    "hi_data": [43.0, 31.5, 12.5],
                                },
                            },
                            {"name": "jes", "type": "normsys", "data": {"lo": 0.95, "hi": 1.04}},
                            {"name": "staterror_SR", "type": "staterror", "data": [2.0, 3.0, 1.2]},
                            {"name": "bkg_unc", "type": "shapesys", "data": [4.0, 3.0, 1.0]},
                        ],
                    },
                ],
            },
            {
                "name": "CR",
                "samples": [
                    {
                        "name": "bkg",
                        "data": [200.0, 150.0],
                        "modifiers": [
                            {"name": "lumi", "type": "lumi", "data": None},
                            {"name": "jes", "type": "normsys", "data": {"lo": 0.97, "hi": 1.02}},
                            {"name": "cr_shape", "type": "shapefactor", "data": None},
                        ],
                    }
                ],
            },
        ],
        "observations": [
            {"name": "SR", "data": [47.0, 41.0, 13.0]},
            {"name": "CR", "data": [205.0, 144.0]},
        ],
        "measurements": [
            measurement("meas", "mu", lumi_parameter(0.017, (0.9, 1.1))),
            measurement("meas_bkgonly", "", lumi_parameter(0.03, (0.8, 1.2))),
        ],
    }


def make_patchset(spec: dict) -> dict:
    """A patchset following pyhf's patchset schema, with two signal hypotheses."""
    return {
        "metadata": {
            "name": "test_patchset",
            "references": {"hepdata": "ins1234567"},
            "description": "signal hypotheses for the test workspace",
            "digests": {"sha256": pyhf.utils.digest(spec, algorithm="sha256")},
            "labels": ["mass"],
        },
        "version": "1.0.0",
        "patches": [
            {
                "metadata": {"name": "signal_300", "values": [300]},
                "patch": [
                    {
                        "op": "replace",
                        "path": "/channels/0/samples/0/data",
                        "value": [9.0, 6.0, 1.0],
                    }
                ],
            },
            {
                "metadata": {"name": "signal_500", "values": [500]},
                "patch": [
                    {
                        "op": "replace",
                        "path": "/channels/0/samples/0/data",
                        "value": [2.0, 3.0, 4.0],
                    },
                    {"op": "replace", "path": "/observations/0/data", "value": [45.0, 38.0, 17.0]},
                ],
            },
        ],
    }


def write_json(path, doc):
    path.write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return path


def logpdf_at(model, data, shift=0.0):
    pars = np.asarray(model.config.suggested_init(), dtype=float) + shift
    return float(model.logpdf(pars, np.asarray(data, dtype=float)))


def pyhf_logpdf(spec, shift=0.0, measurement_name=None):
    ws = pyhf.Workspace(copy.deepcopy(spec))
    model = ws.model(measurement_name=measurement_name)
    pars = np.asarray(model.config.suggested_init(), dtype=float) + shift
    return float(model.logpdf(pars, ws.data(model))[0])


# --------------------------------------------------------------------------- schema messages
def test_reference_workspace_is_valid_for_both():
    spec = make_workspace()
    validate(spec)
    pyhf.Workspace(copy.deepcopy(spec))  # pyhf agrees that it is valid
    ws = Workspace(spec)
    assert ws.channel_names == ["CR", "SR"]
    assert ws.measurement_names == ["meas", "meas_bkgonly"]


def test_schema_error_is_a_diffhep_error():
    assert issubclass(SchemaError, DiffhepError)


def test_missing_observations():
    spec = make_workspace()
    del spec["observations"]
    with pytest.raises(SchemaError) as info:
        validate(spec, file="ws.json")
    err = info.value
    assert "observations" in err.message
    assert err.where == "(document root)"
    assert err.file == "ws.json"
    assert err.fix
    text = str(err)
    assert text.startswith("ws.json: ")
    assert "observations" in text
    assert "fix:" in text


def test_missing_key_in_a_nested_object_gives_its_path():
    spec = make_workspace()
    del spec["channels"][1]["samples"][0]["data"]
    with pytest.raises(SchemaError) as info:
        Workspace(spec, file="ws.json")
    err = info.value
    assert err.where == "channels[1].samples[0]"
    assert "'data'" in err.message
    assert err.fix == "add the missing key"
    assert err.file == "ws.json"


@pytest.mark.parametrize("bad_type", ["frobnicate", "shapesyss"])
def test_unknown_modifier_type_is_named_with_its_location_and_a_fix(bad_type):
    spec = make_workspace()
    spec["channels"][0]["samples"][1]["modifiers"][2]["type"] = bad_type
    with pytest.raises(SchemaError) as info:
        validate(spec, file="ws.json")
    err = info.value
    assert bad_type in err.message
    assert err.where == "channels[0].samples[1].modifiers[2]"
    assert err.fix, "an unknown modifier type must come with a fix (the allowed types)"
    assert "normsys" in err.fix and "staterror" in err.fix


def test_unknown_modifier_type_in_a_model_spec():
    """Model.from_spec (no schema validation) names the type and its location too."""
    spec = make_workspace()
    spec["channels"][0]["samples"][1]["modifiers"][2]["type"] = "frobnicate"
    model_spec = {"channels": spec["channels"], "parameters": []}
    with pytest.raises(DiffhepError) as info:
        diffhep.Model.from_spec(model_spec, file="model.json")
    err = info.value
    assert "frobnicate" in err.message
    assert err.where == "channels[0].samples[1].modifiers[2].type"
    assert "normsys" in err.fix
    assert err.file == "model.json"


def test_malformed_modifier_of_known_type_points_at_the_modifier():
    spec = make_workspace()
    spec["channels"][0]["samples"][0]["modifiers"][2]["data"] = [0.9, 1.1]  # normsys needs lo/hi
    with pytest.raises(SchemaError) as info:
        validate(spec)
    err = info.value
    assert err.where.startswith("channels[0].samples[0].modifiers[2]")
    assert "normsys" in err.message
    assert err.fix


@pytest.mark.parametrize(
    ("mutate", "where"),
    [
        (lambda s: s["observations"][1].__setitem__("data", {"a": 1}), "observations[1].data"),
        (
            lambda s: s["channels"][0]["samples"][1].__setitem__("data", "40 30 12"),
            "channels[0].samples[1].data",
        ),
        (
            lambda s: s["channels"][1]["samples"][0]["data"].__setitem__(1, "150"),
            "channels[1].samples[0].data[1]",
        ),
        (
            lambda s: s["measurements"][0]["config"].__setitem__("poi", 1),
            "measurements[0].config.poi",
        ),
    ],
)
def test_wrong_type_of_data(mutate, where):
    spec = make_workspace()
    mutate(spec)
    with pytest.raises(SchemaError) as info:
        Workspace(spec)
    err = info.value
    assert err.where == where
    assert "type" in err.message
    assert err.fix == "change the value to the expected type"


@pytest.mark.parametrize(
    ("mutate", "key", "where"),
    [
        (lambda s: s["channels"][0].__setitem__("colour", "red"), "colour", "channels[0]"),
        (lambda s: s.__setitem__("extra", 1), "extra", "(document root)"),
        (
            lambda s: s["measurements"][0]["config"]["parameters"][0].__setitem__("init", [1.0]),
            "init",
            "measurements[0].config.parameters[0]",
        ),
    ],
)
def test_additional_property(mutate, key, where):
    spec = make_workspace()
    mutate(spec)
    with pytest.raises(SchemaError) as info:
        validate(spec, file="in.json")
    err = info.value
    assert key in err.message
    assert err.where == where
    assert "remove" in err.fix
    assert err.file == "in.json"


def test_wrong_version():
    spec = make_workspace()
    spec["version"] = "2.0.0"
    with pytest.raises(SchemaError) as info:
        validate(spec)
    assert info.value.where == "version"
    assert info.value.fix


def test_validate_other_schemas():
    spec = make_workspace()
    validate({"channels": spec["channels"], "parameters": []}, "model.json")
    validate(spec["measurements"][0], "measurement.json")
    validate(make_patchset(spec), "patchset.json")
    validate([{"op": "remove", "path": "/channels/1"}], "jsonpatch.json")
    with pytest.raises(SchemaError) as info:
        validate([{"op": "frobnicate", "path": "/channels/1"}], "jsonpatch.json")
    assert info.value.where.startswith("[0]")


# --------------------------------------------------------------------------- JSON files
def test_load_json_missing_file(tmp_path):
    path = tmp_path / "does_not_exist.json"
    with pytest.raises(DiffhepError) as info:
        load_json(path)
    assert info.value.file == str(path)
    assert str(path) in str(info.value)
    assert "not found" in info.value.message
    with pytest.raises(DiffhepError, match=r"does_not_exist\.json"):
        Workspace.load(path)


def test_load_json_invalid_json_gives_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "version": "1.0.0",\n  "channels": ]\n}\n', encoding="utf-8")
    with pytest.raises(DiffhepError) as info:
        load_json(path)
    err = info.value
    assert err.file == str(path)
    assert err.where == "line 3, column 15"
    text = str(err)
    assert "broken.json" in text and "line 3" in text and "column 15" in text
    assert "invalid JSON" in err.message
    with pytest.raises(DiffhepError, match="line 3"):
        Workspace.load(path)


def test_load_json_empty_file(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text("", encoding="utf-8")
    with pytest.raises(DiffhepError) as info:
        load_json(path)
    assert info.value.where == "line 1, column 1"


def test_load_json_gzip_and_stdin(tmp_path, monkeypatch):
    spec = make_workspace()
    gz = tmp_path / "ws.json.gz"
    gz.write_bytes(gzip.compress(json.dumps(spec).encode()))
    doc, name = load_json(gz)
    assert doc == spec
    assert name == str(gz)
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(spec)))
    doc, name = load_json("-")
    assert doc == spec
    assert name == "<stdin>"


def test_invalid_workspace_file_names_the_file(tmp_path):
    spec = make_workspace()
    del spec["measurements"]
    path = write_json(tmp_path / "bad_ws.json", spec)
    with pytest.raises(SchemaError) as info:
        Workspace.load(path)
    assert info.value.file == str(path)
    assert "measurements" in info.value.message


# --------------------------------------------------------------------------- patches
def test_patch_that_does_not_apply():
    ws = Workspace(make_workspace())
    for patch in (
        [{"op": "remove", "path": "/channels/7"}],
        [{"op": "replace", "path": "/channels/0/samples/9/data", "value": [1.0, 2.0, 3.0]}],
        [{"op": "test", "path": "/version", "value": "0.1.0"}],
    ):
        with pytest.raises(DiffhepError) as info:
            ws.patched(patch)
        assert "patch" in info.value.message
        assert info.value.fix


def test_patch_that_does_not_apply_when_loading(tmp_path):
    path = write_json(tmp_path / "ws.json", make_workspace())
    with pytest.raises(DiffhepError) as info:
        Workspace.load(path, patches=[[{"op": "remove", "path": "/channels/5"}]])
    assert info.value.file == str(path)


def test_patch_that_breaks_the_schema_is_rejected():
    ws = Workspace(make_workspace())
    with pytest.raises(SchemaError) as info:
        ws.patched([{"op": "replace", "path": "/channels/0/samples/0/data", "value": "x"}])
    assert info.value.where == "channels[0].samples[0].data"


def test_patched_leaves_the_original_untouched():
    spec = make_workspace()
    before = copy.deepcopy(spec)
    ws = Workspace(spec)
    new = ws.patched([{"op": "replace", "path": "/channels/0/samples/0/data", "value": [1, 1, 1]}])
    assert ws.spec == before
    assert new.spec["channels"][0]["samples"][0]["data"] == [1, 1, 1]


def test_load_plain_json_patch(tmp_path):
    patch = [{"op": "replace", "path": "/channels/0/samples/0/data", "value": [9.0, 6.0, 1.0]}]
    path = write_json(tmp_path / "patch.json", patch)
    assert load_patch(path) == patch
    bad = write_json(tmp_path / "bad_patch.json", [{"op": "frobnicate", "path": "/x"}])
    with pytest.raises(SchemaError) as info:
        load_patch(bad)
    assert info.value.file == str(bad)


def test_patchset_loading(tmp_path):
    spec = make_workspace()
    patchset = make_patchset(spec)
    pyhf.PatchSet(copy.deepcopy(patchset))  # the document follows pyhf's schema
    path = write_json(tmp_path / "patchset.json", patchset)

    for entry in patchset["patches"]:
        name = entry["metadata"]["name"]
        patch = load_patch(path, name=name)
        assert patch == entry["patch"]
        # the patched workspace gives pyhf's numbers
        patched = Workspace(spec).patched(patch)
        model = patched.model()
        expected = pyhf_logpdf(jsonpatch.apply_patch(spec, entry["patch"]), shift=0.05)
        np.testing.assert_allclose(logpdf_at(model, patched.data(model), 0.05), expected, rtol=1e-9)
        # the same through Workspace.load with patches
        ws_path = write_json(tmp_path / "ws.json", spec)
        loaded = Workspace.load(ws_path, patches=[patch])
        assert loaded.spec == patched.spec


def test_patchset_needs_a_patch_name(tmp_path):
    path = write_json(tmp_path / "patchset.json", make_patchset(make_workspace()))
    with pytest.raises(DiffhepError) as info:
        load_patch(path)
    assert "signal_300" in info.value.fix and "signal_500" in info.value.fix
    # the library's argument, not the command line's --patch-name
    assert "choose one with name=NAME" in info.value.fix and "--patch-name" not in str(info.value)
    with pytest.raises(DiffhepError) as info:
        load_patch(path, name="signal_999")
    assert "signal_999" in info.value.message
    assert "signal_300" in info.value.fix and "name=NAME" in info.value.fix
    assert info.value.file == str(path)
    single = write_json(
        tmp_path / "patch.json", make_patchset(make_workspace())["patches"][0]["patch"]
    )
    with pytest.raises(DiffhepError) as info:
        load_patch(single, name="signal_300")
    assert info.value.where == "name" and "name='signal_300' given" in info.value.message
    assert "--patch-name" not in str(info.value)


def test_patchset_with_one_patch_needs_no_name(tmp_path):
    patchset = make_patchset(make_workspace())
    patchset["patches"] = patchset["patches"][1:]
    path = write_json(tmp_path / "patchset.json", patchset)
    assert load_patch(path) == patchset["patches"][0]["patch"]


def test_invalid_patchset(tmp_path):
    patchset = make_patchset(make_workspace())
    del patchset["metadata"]["digests"]
    path = write_json(tmp_path / "patchset.json", patchset)
    with pytest.raises(SchemaError) as info:
        load_patch(path, name="signal_300")
    assert info.value.where == "metadata"
    assert "digests" in info.value.message


# --------------------------------------------------------------------------- round trip
def test_write_read_round_trip(tmp_path):
    spec = make_workspace()
    ws = Workspace(spec)
    path = tmp_path / "out.json"
    ws.write(path)
    back = Workspace.load(path)
    assert back.spec == spec
    assert back.file == str(path)
    for meas in ws.measurement_names:
        m1, m2 = ws.model(meas), back.model(meas)
        assert m1.config.par_names == m2.config.par_names
        d1, d2 = ws.data(m1), back.data(m2)
        assert d1 == d2
        for shift in (0.0, 0.1):
            assert logpdf_at(m1, d1, shift) == logpdf_at(m2, d2, shift)
    # pyhf reads the written file and agrees
    written = json.loads(path.read_text(encoding="utf-8"))
    model = back.model()
    np.testing.assert_allclose(
        logpdf_at(model, back.data(model), 0.1), pyhf_logpdf(written, shift=0.1), rtol=1e-9
    )


def test_write_refuses_an_invalid_workspace(tmp_path):
    ws = Workspace(make_workspace())
    ws.spec["channels"][0]["oops"] = True
    with pytest.raises(SchemaError):
        ws.write(tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


def test_data_follows_model_channel_order():
    spec = make_workspace()
    ws = Workspace(spec)
    model = ws.model()
    pws = pyhf.Workspace(copy.deepcopy(spec))
    pmodel = pws.model()
    np.testing.assert_array_equal(ws.data(model), pws.data(pmodel))
    np.testing.assert_array_equal(
        ws.data(model, include_auxdata=False), pws.data(pmodel, include_auxdata=False)
    )
    assert ws.data(model, include_auxdata=False) == [205.0, 144.0, 47.0, 41.0, 13.0]


def test_measurement_selection_matches_pyhf():
    spec = make_workspace()
    ws = Workspace(spec)
    model = ws.model("meas_bkgonly")
    assert model.config.poi_index is None
    np.testing.assert_allclose(
        logpdf_at(model, ws.data(model), 0.02),
        pyhf_logpdf(spec, shift=0.02, measurement_name="meas_bkgonly"),
        rtol=1e-9,
    )
    with pytest.raises(DiffhepError) as info:
        ws.model("no_such_measurement")
    assert "meas_bkgonly" in info.value.fix


# --------------------------------------------------------------------------- model errors
def test_poi_that_is_not_a_parameter():
    ws = Workspace(make_workspace())
    with pytest.raises(DiffhepError) as info:
        ws.model(poi_name="not_a_parameter")
    err = info.value
    assert "not_a_parameter" in err.message
    assert "mu" in err.fix
    spec = make_workspace()
    spec["measurements"][0]["config"]["poi"] = "mu_typo"
    with pytest.raises(DiffhepError, match="mu_typo"):
        Workspace(spec, file="ws.json").model()
    with pytest.raises(DiffhepError, match="nope"):
        diffhep.Model.from_spec(
            {
                "channels": spec["channels"],
                "parameters": spec["measurements"][0]["config"]["parameters"],
            },
            poi_name="nope",
        )


def test_poi_with_several_components():
    ws = Workspace(make_workspace())
    with pytest.raises(DiffhepError, match="cr_shape"):
        ws.model(poi_name="cr_shape")


def test_lumi_without_parameter_config():
    spec = make_workspace()
    spec["measurements"][0]["config"]["parameters"] = []
    with pytest.raises(DiffhepError) as info:
        Workspace(spec, file="ws.json").model()
    err = info.value
    assert "lumi" in err.message
    assert "lumi" in err.fix
    assert err.file == "ws.json"


@pytest.mark.parametrize(
    "settings",
    [
        {"normsys": {"interpcode": "code2"}},
        {"normsys": {"interpcode": "code4p"}},
        {"histosys": {"interpcode": "code1"}},
        {"histosys": {"interpcode": "code2"}},
        {"normsys": {}},
        {"shapesys": {"interpcode": "code1"}},
    ],
)
def test_unsupported_interpcode(settings):
    ws = Workspace(make_workspace())
    with pytest.raises(DiffhepError) as info:
        ws.model(modifier_settings=settings)
    assert info.value.fix


def test_channel_without_observation():
    spec = make_workspace()
    spec["observations"][1]["name"] = "CR_typo"
    with pytest.raises(DiffhepError) as info:
        Workspace(spec)
    assert "CR" in info.value.message
    assert info.value.where == "observations"


def test_sample_with_wrong_number_of_bins():
    spec = make_workspace()
    spec["channels"][0]["samples"][1]["data"] = [40.0, 30.0]
    with pytest.raises(DiffhepError) as info:
        Workspace(spec)
    assert info.value.where == "channels[0].samples[1].data"


def test_observation_with_wrong_number_of_bins():
    spec = make_workspace()
    spec["observations"][0]["data"] = [1.0, 2.0]
    with pytest.raises(DiffhepError) as info:
        Workspace(spec)
    assert info.value.where == "observations[0].data"


def test_same_name_for_incompatible_modifiers():
    spec = make_workspace()
    spec["channels"][1]["samples"][0]["modifiers"].append(
        {"name": "jes", "type": "normfactor", "data": None}
    )
    with pytest.raises(DiffhepError, match="jes"):
        Workspace(spec).model()


def _signal_patch(**modifier_data):
    signal = {"name": "signal_2", "data": [3.0, 4.0],
              "modifiers": [{"name": "mu", "type": "normfactor", "data": None},
                            {"name": "sig_norm", "type": "normsys",
                             "data": modifier_data or {"hi": 1.1, "lo": 0.9}}]}  # fmt: skip
    return [{"op": "add", "path": "/channels/0/samples/0", "value": signal}]


def test_sample_patches_validate_only_the_new_samples(monkeypatch):
    """A patch that adds samples (what signal patches do) validates the new samples, not the
    whole document again; an invalid sample, or a removal that empties a list, is still
    reported at its place in the document."""
    import diffhep.stats.workspace as module

    ws = Workspace(diffhep.stats.workspace.example_spec())
    schemas = []
    real = module.validate
    monkeypatch.setattr(
        module, "validate", lambda doc, schema="workspace.json", **k: (
            schemas.append(schema), real(doc, schema, **k))[1]
    )  # fmt: skip
    patched = ws.patched(_signal_patch())
    assert schemas == ["defs.json#/definitions/sample"]
    assert patched.spec["channels"][0]["samples"][0]["name"] == "signal_2"
    with pytest.raises(SchemaError) as err:
        ws.patched(_signal_patch(hi="high", lo=0.9))
    assert "channels[0].samples[0].modifiers[1].data.hi" in str(err.value)
    with pytest.raises(SchemaError, match=r"at channels: .*non-empty"):
        ws.patched([{"op": "remove", "path": "/channels/0"}])
    with pytest.raises(SchemaError, match="samples"):
        ws.patched([{"op": "remove", "path": "/channels/0/samples/1"},
                    {"op": "remove", "path": "/channels/0/samples/0"}])  # fmt: skip
    schemas.clear()
    ws.patched([{"op": "replace", "path": "/observations/0/data", "value": [50.0, 49.0]}])
    assert schemas == ["workspace.json"]  # any other operation: the whole document


def test_a_signal_patch_leaves_workspace_and_patch_unchanged():
    """apply_patch shares the untouched samples for signal patches: the result equals
    jsonpatch's, and neither input changes, also when the result is changed afterwards."""
    from diffhep.stats.workspace import apply_patch

    spec = diffhep.stats.workspace.example_spec()
    patch = [*_signal_patch(), {"op": "remove", "path": "/channels/0/samples/2"}]
    spec_before, patch_before = copy.deepcopy(spec), copy.deepcopy(patch)
    doc = apply_patch(spec, patch)
    assert doc == jsonpatch.apply_patch(spec, patch)
    doc["channels"][0]["samples"][0]["name"] = "renamed"
    doc["channels"][0]["samples"].pop()
    assert spec == spec_before and patch == patch_before


def test_a_validated_text_is_not_validated_again_with_a_store(tmp_path, monkeypatch):
    """With the kernel store on, a file whose exact text passed the schema is not validated
    again (a marker named by its digest); another text, or an invalid one, always is."""
    from diffhep.stats import executables
    from diffhep.stats import schema as wsmod  # where load_json looks validate up

    calls = []
    real = wsmod.validate

    def counting(doc, schema, **kwargs):
        calls.append(schema)
        return real(doc, schema, **kwargs)

    monkeypatch.setattr(wsmod, "validate", counting)
    monkeypatch.setattr(executables, "_STORE", tmp_path / "cache" / "exported")
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    spec = make_workspace()
    good.write_text(json.dumps(spec))
    broken = copy.deepcopy(spec)
    del broken["observations"]
    bad.write_text(json.dumps(broken))
    for _ in range(2):
        assert load_json(good, schema="workspace.json")[0] == spec
    assert calls == ["workspace.json"]
    assert load_json(good)[0] == spec  # no schema: not validated
    for _ in range(2):
        with pytest.raises(SchemaError, match="observations"):
            load_json(bad, schema="workspace.json")
    assert calls == ["workspace.json"] * 3
    good.write_text(json.dumps(spec, indent=1))  # the same document, another text
    load_json(good, schema="workspace.json")
    assert calls == ["workspace.json"] * 4
    monkeypatch.setattr(executables, "_STORE", None)  # no store: always validated
    load_json(good, schema="workspace.json")
    assert calls == ["workspace.json"] * 5


def test_samples_checked_once_are_not_checked_again_but_new_ones_are():
    """check_samples checks every sample's numbers once; a patched document then checks only
    the samples its patch added (a NaN there is found), while lengths and channel totals
    are checked for all."""
    from diffhep.stats.validation import WorkspaceContentError, check_samples, check_workspace
    from diffhep.stats.workspace import apply_patch

    spec = make_workspace()
    checked = check_samples(spec)
    bad = copy.deepcopy(spec["channels"][0]["samples"][0])
    bad["name"], bad["data"] = "signal_nan", [1.0, float("nan"), 2.0]
    doc = apply_patch(spec, [{"op": "add", "path": "/channels/0/samples/0", "value": bad}])
    with pytest.raises(WorkspaceContentError, match="NaN") as err:
        check_workspace(doc, checked_samples=checked)
    assert err.value.where == "channels[0].samples[0].data[1]"
    # a checked sample is trusted for its numbers (here: altered behind the check's back) ...
    spec["channels"][0]["samples"][0]["data"][1] = float("nan")
    check_workspace(spec, checked_samples=checked)
    with pytest.raises(WorkspaceContentError, match="NaN"):
        check_workspace(spec)
    # ... not for its length, nor for the channel's totals
    spec["channels"][0]["samples"][0]["data"] = [-1e6, 1.0, 1.0]
    with pytest.raises(WorkspaceContentError, match="total expected yield"):
        check_workspace(spec, checked_samples=checked)
    spec["channels"][0]["samples"][0]["data"] = [1.0, 1.0]
    with pytest.raises(WorkspaceContentError, match="bins"):
        check_workspace(spec, checked_samples=checked)
