"""CSV audiences (campaigns/audiences.py): the upload streamed into Postgres, its errors,
encodings and delimiters, the campaign's mapping and preview, the fan-out from the file
end to end, the API, and the rows' retention and erasure."""

from __future__ import annotations

import io

import pytest

from app import db
from campaigns import audiences
from campaigns.models import AudienceFile
from campaigns.services import ServiceError

HEADER = "telefone;nome;cidade;cupom\n"


def _import(data: bytes, name: str = "clientes.csv", **config) -> AudienceFile:
    from flask import current_app

    return audiences.import_csv(io.BytesIO(data), name, None, current_app.config | config)


def _rows(file_id: int) -> list[list[str]]:
    return [cells for _n, cells in audiences.page(db.session, file_id, 0, 100)]


def test_a_file_is_kept_row_by_row_with_its_header(app):
    data = (HEADER + "11987654321;João;São Paulo;A1\n(21) 99876-5432;Maria;Rio;B2\n").encode()
    audience = _import(data)
    assert audience.columns == ["telefone", "nome", "cidade", "cupom"]
    assert (audience.row_count, audience.delimiter, audience.encoding) == (2, ";", "utf-8")
    assert audience.name == "clientes.csv" and audience.size_bytes == len(data)
    assert _rows(audience.id) == [
        ["11987654321", "João", "São Paulo", "A1"],
        ["(21) 99876-5432", "Maria", "Rio", "B2"],
    ]
