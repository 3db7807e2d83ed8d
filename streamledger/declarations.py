"""Reading the model declarations file the learning and inference services share.

    declarations = load_declarations(settings.learning_models_file)

The file is TOML (`deploy/models.toml` by default); `streamledger.core.models` checks what it
declares, without touching the file system.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from streamledger.core.models import (
    DeclarationError,
    ModelDeclaration,
    parse_declarations,
)


def load_declarations(path: Path | str) -> list[ModelDeclaration]:
    """Read and check every `[[model]]` of a TOML file."""
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise DeclarationError(f"model declarations file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise DeclarationError(f"{path}: not valid TOML: {exc}") from None
    return parse_declarations(document, where=str(path))
