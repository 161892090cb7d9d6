"""Makes lm-eval's own ``lm_eval --model gptkit ...`` command find gptkit's model, with lm-eval releases that read
no plugin entry points (0.4.13 and earlier).

``gptkit_lm_eval.pth``, which gptkit's wheel (and editable install) puts in site-packages, imports this module at
every interpreter start-up, so it must stay nearly free: it imports nothing (``sys`` is always loaded) and only
puts a finder at the front of ``sys.meta_path``. That finder answers for one module name, ``lm_eval.models``; for
every other import it returns None at once. When ``lm_eval.models`` is imported, the finder lets the normal
machinery find and load it, and right after the module has run — lm-eval has then filled its model registry with
its own lazy entries — it registers ``gptkit`` as one more lazy entry, unless something registered that name
first. Nothing of gptkit, torch or lm-eval is imported before lm-eval itself asks for its models; ``gptkit``'s
adapter loads only when lm-eval resolves ``--model gptkit``.

Why after ``lm_eval.models`` and not earlier: lm-eval's ``get_model`` imports ``lm_eval.models`` (its built-in
models) only while the registry is empty, so an entry put in too early would hide ``hf`` and the others.

The lazy entry is gptkit's own ``lm_eval.models`` entry point (``pyproject.toml``) when its metadata can be read, so
an lm-eval release that discovers plugins itself and registers the same entry point sees an equal value, not a
clash; otherwise the same ``module:Class`` text.
"""

import sys

MODEL_NAME = "gptkit"
TARGET = "gptkit.evaluate.lm_eval_adapter:GptkitLM"
WATCHED = "lm_eval.models"


def _placeholder():
    """gptkit's entry point for lm-eval (equal to what plugin discovery would register), else its target text."""
    try:
        from importlib.metadata import distribution

        for ep in distribution("gptkit").entry_points:
            if ep.group == "lm_eval.models" and ep.name == MODEL_NAME:
                return ep
    except Exception:  # no metadata (running from a source tree): the text form works as well
        pass
    return TARGET


def register() -> bool:
    """Register the lazy ``gptkit`` model in lm-eval's registry if lm-eval knows no such model yet.

    Returns whether it registered. Never raises: a failure here must not break lm-eval for its other models.
    """
    try:
        from lm_eval.api.registry import model_registry

        if MODEL_NAME in model_registry:
            return False
        model_registry.register(MODEL_NAME, target=_placeholder())
        return True
    except Exception as e:  # an lm-eval whose registry works differently: say so, run lm-eval as it is
        import warnings

        warnings.warn(f"gptkit could not register its lm-eval model {MODEL_NAME!r}: {type(e).__name__}: {e}",
                      RuntimeWarning, stacklevel=2)
        return False


class _Loader:
    """Wraps the real loader of ``lm_eval.models``: runs the module, then registers gptkit."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):  # anything else a loader is asked (get_resource_reader, is_package, ...)
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        # the module sees its real loader, as if imported without the hook
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        uninstall()
        register()


class _Finder:
    """A ``sys.meta_path`` finder that only ever answers for ``lm_eval.models``."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != WATCHED:
            return None
        for finder in sys.meta_path:  # the finders after this one find the real module
            if isinstance(finder, _Finder) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once); if lm-eval's models are already loaded, register now."""
    if WATCHED in sys.modules:
        register()
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Finder)]


install()
