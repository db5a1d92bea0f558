"""Benchmark a CSV audience's import: a million rows, their speed and the memory it takes.

Not a test: it measures, on this machine, what bench/README.md records.

    .venv/bin/python bench/csv_import.py                    # 1,000,000 rows
    .venv/bin/python bench/csv_import.py --rows 100000

It writes a CSV of ``--rows`` rows to a temporary file, as a Brazilian Excel export is
(UTF-8 with a byte order mark, ``;``): a mobile number written the ways people write
them, a name, an e-mail, a city, its state, a coupon and an amount with a decimal comma.
Then, in a scratch database (bench/_common.py), in the same run:

- the import through the real code path, the function ``POST /audiences`` and
  ``POST /api/v1/audiences`` call (``audiences.import_csv``) on the file opened as
  werkzeug's spooled upload is (a file on disk): rows/s, and the process's memory
  growth (its peak RSS during the import, sampled every 10 ms, less its RSS before);
- the floor: PostgreSQL's own CSV parser fed the same file (``COPY … FROM STDIN WITH
  (FORMAT csv)`` into a table of seven text columns, logged as ``audience_rows`` is but
  with no key to keep up, the bytes sent as they are read), rows/s.

The growth is checked twice: the sampled peak, and the kernel's own high-water mark
(``ru_maxrss``) after the import less before it (the file was written a batch of lines
at a time, so the mark before is the process's RSS then).

Then a person's erasure's look-up in the file (``audiences.person_rows`` through the
``phone_tails`` GIN index, and the whole ``personal_data.preview_erasure``) for the
first row's number: milliseconds.

Then, with ``--fan-out``, the fan-out of a campaign whose audience is that file (the demo's
promo_weekend, three variables from columns): ``fanout.fan_out_file_page`` called page
after page in this process, as the fan-out job does, from Send now to the last page;
rows/s (the ERP's fan-out, ``bench/engine.py``, is the yardstick: about 20,000/s).

Targets (issue 20): at least 20,000 rows/s and under 50 MB of growth. It prints one JSON
line and a table, then drops the database.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere in the checkout
    sys.path.insert(0, str(ROOT))

from bench._common import scratch_database  # noqa: E402

TARGET_ROWS_PER_SECOND = 20_000
TARGET_GROWTH_MB = 50
FIRST = ["Ana", "João", "Maria", "José", "Francisca", "Antônio", "Conceição", "Luís", "Bia"]
LAST = ["Silva", "Santos", "Oliveira", "Souza", "Pereira", "Lima", "Gonçalves", "Araújo"]
CITIES = [
    ("São Paulo", "SP", "11"),
    ("Rio de Janeiro", "RJ", "21"),
    ("Belo Horizonte", "MG", "31"),
    ("Porto Alegre", "RS", "51"),
    ("Recife", "PE", "81"),
    ("Manaus", "AM", "92"),
    ("Cuiabá", "MT", "65"),
    ("Rio Branco", "AC", "68"),
]


def write_csv(path: Path, rows: int, seed: int = 20) -> int:
    """A Brazilian Excel export of ``rows`` customers; its size in bytes."""
    pick = random.Random(seed)
    with open(path, "w", encoding="utf-8-sig", newline="") as out:
        out.write("Telefone;Nome;E-mail;Cidade;UF;Cupom;Valor\r\n")
        lines = []
        for n in range(rows):
            city, state, ddd = CITIES[n % len(CITIES)]
            number = f"9{pick.randrange(10_000_000, 99_999_999)}"
            phone = (
                f"({ddd}) {number[:5]}-{number[5:]}",
                f"+55 {ddd} {number}",
                f"{ddd}{number}",
            )[n % 3]
            first, last = FIRST[n % len(FIRST)], LAST[n % len(LAST)]
            amount = f"{pick.randrange(1000, 999_999) // 100},{pick.randrange(100):02d}"
            lines.append(
                f"{phone};{first} {last};{first.lower()}{n}@exemplo.com.br;{city};{state};"
                f"PROMO{n % 997:03d};{amount}\r\n"
            )
            if len(lines) == 10_000:
                out.writelines(lines)
                lines.clear()
        out.writelines(lines)
    return path.stat().st_size


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """The process's largest RSS while the block runs, sampled every 10 ms."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(0.01)

    def __enter__(self) -> PeakRss:
        self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def floor(url: str, path: Path) -> tuple[float, int]:
    """PostgreSQL's own CSV COPY of the file: (seconds, rows)."""
    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute(
            "CREATE TABLE bench_floor (phone text, name text, email text, city text,"
            " state text, coupon text, amount text)"
        )
        started = time.perf_counter()
        with conn.cursor() as cursor:
            copy_sql = (
                "COPY bench_floor FROM STDIN WITH (FORMAT csv, DELIMITER ';', HEADER true,"
                " ENCODING 'UTF8')"
            )
            with cursor.copy(copy_sql) as copy, open(path, "rb") as source:
                source.read(3)  # the BOM: PostgreSQL would keep it in the header's first name
                while chunk := source.read(1024 * 1024):
                    copy.write(chunk)
        conn.commit()
        seconds = time.perf_counter() - started
        rows = conn.execute("SELECT count(*) FROM bench_floor").fetchone()[0]
    return seconds, rows


def fan_out_rows_per_s(app, file_id: int) -> dict[str, object]:
    """A campaign on the file, started, and its fan-out run to the end, timed."""
    import sqlalchemy as sa

    from app import db
    from campaigns import fanout
    from campaigns.models import Message, MessageTemplate, User
    from campaigns.services.campaigns import (
        create_campaign,
        send_campaign_now,
        template_variables_for,
    )
    from campaigns.services.demo import DEMO_ADMIN_EMAIL, seed_demo
    from campaigns.services.templates import default_sender
    from campaigns.validation import parse_campaign

    seed_demo()
    owner = db.session.scalar(sa.select(User).where(User.email == DEMO_ADMIN_EMAIL))
    template = db.session.scalar(
        sa.select(MessageTemplate).where(MessageTemplate.name == "promo_weekend")
    )
    fields = parse_campaign(
        {
            "name": "CSV fan-out",
            "sender_id": default_sender().id,
            "template_id": template.id,
            "audience_file_id": file_id,
            "audience_phone_column": "Telefone",
            "variables": {
                "first_name": {"field": "Nome"},
                "discount": {"text": "10%"},
                "city": {"field": "Cidade"},
                "coupon": {"field": "Cupom"},
            },
        },
        template_variables_for(template.id),
    )
    campaign = create_campaign(fields, owner.id)
    send_campaign_now(campaign.id, owner.id)  # its fan-out job never runs here: this does
    started = time.perf_counter()
    pages = 0
    while (page := fanout.fan_out_file_page(campaign.id, app.config)) and not page.done:
        pages += 1
    seconds = time.perf_counter() - started
    messages = db.session.scalar(
        sa.select(sa.func.count()).select_from(Message).where(Message.campaign_id == campaign.id)
    )
    db.session.rollback()
    return {
        "fan_out_seconds": round(seconds, 2),
        "fan_out_messages": messages,
        "fan_out_rows_per_s": round(messages / seconds),
        "fan_out_pages": pages + 1,
    }


def erasure_lookup_ms(app, file_id: int) -> dict[str, object]:
    """A person's rows found in the file, and a whole erasure preview: milliseconds."""
    from app import db
    from campaigns import audiences, phones
    from campaigns.services import personal_data

    region = app.config["PHONE_DEFAULT_REGION"]
    first = audiences.page(db.session, file_id, 0, 1)[0][1][0]
    phone = phones.normalise(first, region)
    assert phone is not None
    started = time.perf_counter()
    found = audiences.person_rows(db.session, phone, region)
    lookup = time.perf_counter() - started
    db.session.rollback()
    with app.test_request_context():
        started = time.perf_counter()
        report = personal_data.preview_erasure(phone)
        preview = time.perf_counter() - started
    assert found and report.audience_rows == len(found)
    return {
        "person_rows_ms": round(lookup * 1000, 1),
        "preview_erasure_ms": round(preview * 1000, 1),
    }


def run(rows: int, with_fan_out: bool = False) -> dict[str, object]:
    from app import create_app, db
    from campaigns import audiences
    from campaigns.config import sqlalchemy_url

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "clientes.csv"
        size = write_csv(path, rows)
        with scratch_database(f"disparo_bench_csv_{os.getpid()}") as url:
            app = create_app({"SQLALCHEMY_DATABASE_URI": sqlalchemy_url(url)})
            with app.app_context():
                db.session.execute(db.text("SELECT 1"))  # the pool's connection, before
                db.session.rollback()
                before = rss_bytes()
                high_water_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                with open(path, "rb") as upload, PeakRss() as peak:
                    started = time.perf_counter()
                    audience = audiences.import_csv(upload, path.name, None, app.config)
                    seconds = time.perf_counter() - started
                high_water = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                imported = audience.row_count
                columns = audience.columns
                erasure = erasure_lookup_ms(app, audience.id)
                fan_out = fan_out_rows_per_s(app, audience.id) if with_fan_out else None
                db.session.remove()
                db.engine.dispose()
            floor_seconds, floor_rows = floor(url, path)
    growth = peak.peak - before
    result = {
        "rows": rows,
        "file_mb": round(size / 1e6, 1),
        "imported": imported,
        "columns": columns,
        "import_seconds": round(seconds, 2),
        "import_rows_per_s": round(imported / seconds),
        "rss_before_mb": round(before / 1e6, 1),
        "rss_growth_mb": round(growth / 1e6, 1),
        "high_water_before_mb": round(high_water_before / 1e6, 1),
        "high_water_growth_mb": round((high_water - high_water_before) / 1e6, 1),
        "floor_seconds": round(floor_seconds, 2),
        "floor_rows_per_s": round(floor_rows / floor_seconds),
        "ratio_to_floor": round(seconds / floor_seconds, 2),
        **erasure,
        **(fan_out or {}),
    }
    result["targets_met"] = (
        imported == rows
        and result["import_rows_per_s"] >= TARGET_ROWS_PER_SECOND
        and result["rss_growth_mb"] < TARGET_GROWTH_MB
        and result["high_water_growth_mb"] < TARGET_GROWTH_MB
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--fan-out", action="store_true", help="also time a campaign's fan-out from the file"
    )
    args = parser.parse_args()
    result = run(args.rows, args.fan_out)
    print(json.dumps(result))
    print()
    print(f"| {'path':<46} | {'seconds':>8} | {'rows/s':>9} |")
    print(f"|{'-' * 48}|{'-' * 10}|{'-' * 11}|")
    print(
        f"| {'floor: COPY … FORMAT csv of the file':<46} | {result['floor_seconds']:>8} |"
        f" {result['floor_rows_per_s']:>9,} |"
    )
    print(
        f"| {'audiences.import_csv (the views call it)':<46} | {result['import_seconds']:>8} |"
        f" {result['import_rows_per_s']:>9,} |"
    )
    if "fan_out_rows_per_s" in result:
        print(
            f"| {'fan-out of a campaign on the file':<46} | {result['fan_out_seconds']:>8} |"
            f" {result['fan_out_rows_per_s']:>9,} |"
        )
    print(
        f"\na person's rows in the file: {result['person_rows_ms']} ms"
        f" (the erasure's whole preview: {result['preview_erasure_ms']} ms)"
    )
    print(
        f"\nmemory: RSS {result['rss_before_mb']} MB before, +{result['rss_growth_mb']} MB at"
        f" the import's peak, +{result['high_water_growth_mb']} MB on the kernel's high-water"
        f" mark (target < {TARGET_GROWTH_MB} MB);"
        f" targets met: {result['targets_met']}"
    )


if __name__ == "__main__":
    main()
