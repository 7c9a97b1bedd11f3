"""``edmlab.io.network_file.build`` follows Hydra's ``instantiate`` for flat specs, ``_partial_`` included."""
import functools

from edmlab.infra.spec import build
from edmlab.design.loss_weighting import EDMWeighting


def test_a_partial_spec_builds_a_partial_and_a_plain_spec_an_instance():
    partial = build({"_target_": "edmlab.design.loss_weighting.EDMWeighting", "_partial_": True, "sigma_data": 0.25})
    assert isinstance(partial, functools.partial) and partial.func is EDMWeighting
    assert partial().sigma_data == 0.25
    plain = build({"_target_": "edmlab.design.loss_weighting.EDMWeighting", "sigma_data": 0.3})
    assert isinstance(plain, EDMWeighting) and plain.sigma_data == 0.3
