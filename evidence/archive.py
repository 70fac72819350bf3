"""Writing an evidence pack: every table as CSV and JSON, ``controls.csv``, ``report.html``,
``manifest.json`` (each file's SHA-256) and ``SHA256SUMS``, into one zip, in a fixed order.

Rows are streamed: each table is read once, its CSV written straight into the zip and its JSON
into a spooled temporary file copied in right after (so both hold exactly the same rows), and
only the first rows of each table are kept for the HTML report.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.template.loader import render_to_string

from evidence.controls import CONTROLS, MAPPING, sections_for
from evidence.sections import Section, Table

FORMAT = "tollgate-evidence-pack"
VERSION = 1
SPOOL_BYTES = 32 * 1024 * 1024
BUFFER_BYTES = 64 * 1024
PROGRESS_EVERY_ROWS = 5000
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection): such text
# gets a leading apostrophe in the CSV files. The JSON files keep every value as it is.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

Progress = Callable[[str, float], None]


def cell(value: Any) -> str:
    """One CSV cell: booleans as true/false, lists joined by "; ", objects as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "; ".join(cell(v) if not isinstance(v, dict) else _compact(v) for v in value)
    if isinstance(value, dict):
        return _compact(value)
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True,
                      default=str)


class _Entry:
    """A file being written into the zip: hashed and sized as it goes, in 64 KiB writes."""

    def __init__(self, archive: zipfile.ZipFile, name: str, when: datetime,
                 large: bool = False) -> None:
        info = zipfile.ZipInfo(name, date_time=when.timetuple()[:6])
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        self.name = name
        self._out = archive.open(info, "w", force_zip64=large)
        self._sha = hashlib.sha256()
        self.size = 0
        self._buffer: list[bytes] = []
        self._buffered = 0

    def write(self, data: str | bytes) -> int:
        raw = data.encode("utf-8") if isinstance(data, str) else data
        self._sha.update(raw)
        self.size += len(raw)
        self._buffer.append(raw)
        self._buffered += len(raw)
        if self._buffered >= BUFFER_BYTES:
            self._flush()
        return len(data)

    def _flush(self) -> None:
        if self._buffer:
            self._out.write(b"".join(self._buffer))
            self._buffer, self._buffered = [], 0

    def close(self) -> dict[str, Any]:
        self._flush()
        self._out.close()
        return {"name": self.name, "sha256": self._sha.hexdigest(), "size": self.size}

    def abandon(self) -> None:
        """Close the zip's handle after a failure (the pack is discarded anyway), so that the
        error that stopped the build is the one reported."""
        self._buffer = []
        self._out.close()


@dataclass
class TableResult:
    table: Table
    files: list[str]
    rows: int = 0
    tally: dict[str, int] = field(default_factory=dict)
    sample: list[list[str]] = field(default_factory=list)

    @property
    def headings(self) -> list[str]:
        """Column names as report.html shows them (so that they wrap between words)."""
        return [c.replace("_", " ") for c in self.table.columns]

    @property
    def truncated(self) -> bool:
        return self.rows > len(self.sample)


@dataclass
class Built:
    content: bytes
    sha256: str
    files: list[dict[str, Any]]
    summary: dict[str, Any]


class PackWriter:
    """Writes one pack; ``progress(step, fraction)`` is called between (and inside big) tables."""

    def __init__(self, *, meta: dict[str, Any], sections: list[Section], progress: Progress,
                 report_rows: int) -> None:
        self.meta = meta
        self.sections = sections
        self.progress = progress
        self.report_rows = report_rows
        self.when = datetime.fromisoformat(meta["generated_at"].replace("Z", "+00:00"))
        self.files: list[dict[str, Any]] = []
        tables = [t for s in sections for t in s.tables]
        self._units = sum(5 if t.large else 1 for t in tables) + 2
        self._done = 0.0

    def _step(self, text: str, units: float = 0.0) -> None:
        self.progress(text, min(1.0, (self._done + units) / self._units))

    def _add(self, archive: zipfile.ZipFile, name: str, data: str | bytes) -> None:
        entry = _Entry(archive, name, self.when)
        entry.write(data)
        self.files.append(entry.close())

    def write(self) -> Built:
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
            with zipfile.ZipFile(spool, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                results: dict[str, list[TableResult]] = {}
                for section in self.sections:
                    results[section.key] = [self._table(archive, section, table)
                                            for table in section.tables]
                self._step("Writing the control mapping and the report")
                self._add(archive, "controls.csv", self._controls_csv(results))
                summary = self._summary(results)
                self._add(archive, "report.html", self._report(results, summary))
                self._done += 1
                self._step("Writing the manifest")
                manifest = self._manifest(results, summary)
                self._add(archive, "manifest.json", json.dumps(
                    manifest, indent=2, ensure_ascii=False, default=str) + "\n")
                self._add(archive, "SHA256SUMS", "".join(
                    f"{f['sha256']}  {f['name']}\n" for f in self.files))
            spool.seek(0)
            content = spool.read()
        return Built(content=content, sha256=hashlib.sha256(content).hexdigest(),
                     files=self.files, summary=summary)

    # --- tables -------------------------------------------------------------------------------

    def _table(self, archive: zipfile.ZipFile, section: Section, table: Table) -> TableResult:
        """One read of the table: its CSV straight into the zip, its JSON into a spooled file
        copied in afterwards (the zip takes one file at a time)."""
        result = TableResult(table, [f"{table.name}.csv", f"{table.name}.json"])
        weight = 5 if table.large else 1
        self._step(f"{section.title}: {table.title}")
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, mode="w+b") as json_file:
            csv_entry = _Entry(archive, f"{table.name}.csv", self.when, large=table.large)
            try:
                self._rows(section, table, result, csv_entry, json_file, weight)
            except BaseException:
                csv_entry.abandon()
                raise
            self.files.append(csv_entry.close())
            json_file.seek(0)
            json_entry = _Entry(archive, f"{table.name}.json", self.when, large=table.large)
            shutil.copyfileobj(json_file, json_entry, BUFFER_BYTES)
            self.files.append(json_entry.close())
        self._done += weight
        return result

    def _rows(self, section: Section, table: Table, result: TableResult, csv_entry: _Entry,
              json_file: Any, weight: int) -> None:
        expected = table.expected() if table.expected else None
        writer = csv.writer(csv_entry)
        writer.writerow(table.columns)
        header = {"format": FORMAT, "version": VERSION, "table": table.name,
                  "section": section.key, "tenant": self.meta["tenant"]["slug"],
                  "period": self.meta["period"], "columns": list(table.columns)}
        json_file.write((json.dumps(header, ensure_ascii=False)[:-1] + ', "rows": [').encode())
        tally: Counter[str] = Counter()
        for row in table.rows():
            writer.writerow([cell(row.get(c)) for c in table.columns])
            json_file.write((",\n" if result.rows else "\n").encode())
            json_file.write(json.dumps({c: row.get(c) for c in table.columns},
                                       ensure_ascii=False, default=str).encode("utf-8"))
            result.rows += 1
            if table.tally:
                tally[cell(row.get(table.tally)) or "(none)"] += 1
            if table.in_report and len(result.sample) < self.report_rows:
                result.sample.append([cell(row.get(c)) for c in table.columns])
            if result.rows % PROGRESS_EVERY_ROWS == 0:
                share = result.rows / expected if expected else 0.5
                self._step(f"{section.title}: {result.rows:,} rows"
                           + (f" of {expected:,}" if expected else ""),
                           weight * min(share, 0.99))
        json_file.write(b"\n]}\n")
        result.tally = dict(sorted(tally.items()))

    # --- controls, summary, report, manifest --------------------------------------------------

    def _controls_csv(self, results: dict[str, list[TableResult]]) -> str:
        out = _Lines()
        writer = csv.writer(out)
        writer.writerow(["section", "section_title", "files", "framework", "control",
                         "control_title", "explanation"])
        for section in self.sections:
            files = " ".join(f for r in results[section.key] for f in r.files)
            for control in section.controls:
                writer.writerow([section.key, section.title, files, control["framework"],
                                 control["control"], control["title"], control["explanation"]])
        return out.text()

    def _summary(self, results: dict[str, list[TableResult]]) -> dict[str, Any]:
        """The findings, as the pack page and the audit event show them."""
        rows = {r.table.name: r.rows for rs in results.values() for r in rs}
        tallies = {r.table.name: r.tally for rs in results.values() for r in rs}
        chain = next((s for s in self.sections if s.key == "audit_chain"), None)
        chain_row = {}
        if chain is not None:
            chain_row = next(iter(chain.tables[0].rows()), {})
        grants = tallies.get("grants", {})
        return {
            "rows": rows,
            "grants": rows.get("grants", 0),
            "approved_before_access": grants.get("true", 0),
            "approved_after_access": grants.get("false", 0),
            "direct_grants": grants.get("direct", 0),
            "break_glass": rows.get("break_glass", 0),
            "sod_checked": rows.get("separation_of_duties", 0),
            "sod_failed": tallies.get("separation_of_duties", {}).get("fail", 0),
            "audit_events": rows.get("audit_events", 0),
            "audit_chain": chain_row.get("result", ""),
            "audit_chain_line": chain_row.get("line", ""),
            "audit_head_hash": chain_row.get("head_hash", ""),
        }

    def _report(self, results: dict[str, list[TableResult]], summary: dict[str, Any]) -> str:
        sections = []
        for section in self.sections:
            sections.append({
                "key": section.key, "title": section.title, "description": section.description,
                "controls": section.controls, "facts": section.facts(),
                "breakdown": section.breakdown(), "tables": results[section.key],
            })
        controls = [{"control": c, "framework": f, "title": t,
                     "sections": [s.title for s in self.sections if s.key in sections_for(c)]}
                    for c, (f, t) in CONTROLS.items()]
        return render_to_string("evidence/report.html", {
            "meta": self.meta, "summary": summary, "sections": sections, "controls": controls,
            "files": list(self.files), "report_rows": self.report_rows,
        })

    def _manifest(self, results: dict[str, list[TableResult]],
                  summary: dict[str, Any]) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, **self.meta,
            "files": list(self.files),
            "sections": [{
                "key": s.key, "title": s.title, "description": s.description,
                "files": [f for r in results[s.key] for f in r.files],
                "rows": {r.table.name: r.rows for r in results[s.key]},
                "controls": [{"control": c["control"], "explanation": c["explanation"]}
                             for c in s.controls],
            } for s in self.sections],
            "controls": {c: {"framework": f, "title": t, "sections": sections_for(c)}
                         for c, (f, t) in CONTROLS.items()},
            "control_mapping": MAPPING,
            "summary": summary,
            "note": "SHA-256 of every file above; the manifest's own hash is in SHA256SUMS and "
                    "the zip's hash in Tollgate's audit trail (evidence.generated).",
        }


class _Lines:
    """A tiny text sink for csv.writer."""

    def __init__(self) -> None:
        self._parts: list[str] = []

    def write(self, text: str) -> int:
        self._parts.append(text)
        return len(text)

    def text(self) -> str:
        return "".join(self._parts)

