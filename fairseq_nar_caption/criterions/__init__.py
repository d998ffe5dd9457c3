"""Every module of this folder is imported, so each registers itself with fairseq (a new file is found
without an import line)."""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
