"""Config specs to objects: a ``{'_target_': 'pkg.Class', **kwargs}`` dict is built by ``build`` (Hydra's
``instantiate`` for a flat spec). A spec read from a file names one of edmlab's own classes (``FILE_TARGETS``),
looked up, never imported by name; a spec of the user's own config (``conf/``) resolves any dotted path, as Hydra
does."""
import functools
import importlib


# What a file's spec may name, by role; each class also under its defining module's path (edmlab.io.nvlabs writes
# edmlab.nets.edm2.EDM2UNet, a user's conf may write edmlab.design.preconditioning.EDMPrecond).
FILE_TARGETS = {
    "network": ("edmlab.nets.SongUNet", "edmlab.nets.DhariwalUNet", "edmlab.nets.MLP", "edmlab.nets.EDM2UNet"),
    "preconditioning": ("edmlab.EDMPrecond", "edmlab.VPPrecond", "edmlab.VEPrecond", "edmlab.iDDPMPrecond",
                        "edmlab.EDM2Precond", "edmlab.FlowPrecond"),
    "data set": ("edmlab.data.DigitsDataset", "edmlab.data.PointsDataset"),
}
# The names files written before the layered package give the same classes.
EARLIER_NAMES = {
    **{f"edmlab.preconditioning.{c}": f"edmlab.{c}" for c in ("EDMPrecond", "VPPrecond", "VEPrecond", "iDDPMPrecond")},
    "edmlab.nets.EDM2Precond": "edmlab.EDM2Precond", "edmlab.nets.edm2.EDM2Precond": "edmlab.EDM2Precond",
}


def resolve(target: str):
    """The object named by a dotted ``_target_`` path of the user's own config (any importable name)."""
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


@functools.cache
def _file_classes(role: str) -> dict:
    classes = {}
    for name in FILE_TARGETS[role]:
        cls = resolve(name)
        classes[name] = classes[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return classes | {old: classes[new] for old, new in EARLIER_NAMES.items() if new in classes}


def file_target(target, role: str, source) -> type:
    """The class a ``_target_`` read from the file ``source`` names, looked up in ``FILE_TARGETS[role]``: nothing
    is imported by name, so a file naming ``os.system`` or ``builtins.exec`` is refused before anything runs."""
    classes = _file_classes(role)
    if not isinstance(target, str) or target not in classes:
        raise ValueError(f"{source}: its {role} _target_ {target!r} is not one of edmlab's own "
                         f"({', '.join(FILE_TARGETS[role])}); a file may name only those, and nothing it names "
                         f"was imported or run")
    return classes[target]


def target_class(target, role: str, source):
    """The class of a ``_target_``: any importable one for the user's config (``source`` None), else ``file_target``."""
    return resolve(target) if source is None else file_target(target, role, source)


def _nested_target(value):
    """The first ``_target_`` among the values of a spec (in dicts and lists at any depth), else None."""
    children = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for child in children:
        found = child.get("_target_") if isinstance(child, dict) and "_target_" in child else _nested_target(child)
        if found is not None:
            return found
    return None


def build(spec: dict, *, role: str | None = None, source=None, **extra):
    """Instantiate a ``{'_target_': 'pkg.Class', **kwargs}`` spec as Hydra's ``instantiate`` does for a flat spec:
    with ``_partial_: true`` the result is ``functools.partial(Class, **kwargs)``, to be called with what is known
    later (a network spec waits for the data's keywords). Flat: a nested ``_target_`` dict is passed as a dict.

    ``source``: the file the spec was read from, whose ``_target_`` must then be one of ``FILE_TARGETS[role]``
    and whose values hold no ``_target_`` (Hydra would build those too); None for a spec of the user's own
    config, whose ``_target_`` is imported."""
    spec = dict(spec)
    target = target_class(spec.pop("_target_", None), role, source)
    nested = _nested_target(spec) if source is not None else None
    if nested is not None:
        raise ValueError(f"{source}: its {role} spec nests a _target_ {nested!r}; a file's specs are flat, so "
                         f"nothing it names was imported or run")
    if spec.pop("_partial_", False):
        return functools.partial(target, **spec, **extra)
    return target(**spec, **extra)
