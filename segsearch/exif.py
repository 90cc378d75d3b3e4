"""Photo metadata read at index time: when it was taken, with which camera, where.

Read from the EXIF block PIL already parsed from the header (no pixel work). Anything missing,
malformed or out of range is simply absent: a photo without EXIF, or with a broken one, indexes
exactly as before. The values feed SQL (``images``) and the vector payload, where search filters
(``taken_after``, ``taken_before``, ``camera``, ``near``) use them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

# EXIF tags (CIPA DC-008): IFD0, the Exif sub-IFD and the GPS sub-IFD.
MAKE, MODEL, DATETIME = 0x010F, 0x0110, 0x0132
EXIF_IFD, GPS_IFD = 0x8769, 0x8825
DATETIME_ORIGINAL, OFFSET_TIME_ORIGINAL = 0x9003, 0x9011
GPS_LAT_REF, GPS_LAT, GPS_LON_REF, GPS_LON = 1, 2, 3, 4
MAX_TEXT = 128  # make/model longer than this are not a camera name


@dataclass(frozen=True)
class PhotoMeta:
    taken_at: dt.datetime | None = None  # aware; a photo without a time zone offset is read as UTC
    camera_make: str | None = None
    camera_model: str | None = None
    lat: float | None = None
    lon: float | None = None

    @property
    def camera(self) -> str | None:
        """ "Canon Canon EOS R5" reads "Canon EOS R5": the model often repeats the make."""
        make, model = self.camera_make or "", self.camera_model or ""
        if model.lower().startswith(make.lower()):
            make = ""
        return " ".join(p for p in (make, model) if p) or None

    def is_empty(self) -> bool:
        return self == PhotoMeta()

    def payload(self) -> dict:
        """What filters need, in the vector payload: epoch seconds, lower-case camera terms (make,
        model and both, so "canon" and "canon eos r5" both match) and a geo point."""
        out: dict = {}
        if self.taken_at is not None:
            out["taken_at"] = self.taken_at.timestamp()
        terms = {t.lower() for t in (self.camera_make, self.camera_model, self.camera) if t}
        if terms:
            out["camera"] = sorted(terms)
        if self.lat is not None and self.lon is not None:
            out["location"] = {"lat": self.lat, "lon": self.lon}
        return out

    def columns(self) -> dict:
        return {
            "taken_at": self.taken_at,
            "camera_make": self.camera_make,
            "camera_model": self.camera_model,
            "gps_lat": self.lat,
            "gps_lon": self.lon,
        }


def _text(v) -> str | None:
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if not isinstance(v, str):
        return None
    v = " ".join(v.replace("\x00", " ").split())
    return v if 0 < len(v) <= MAX_TEXT else None


def _when(value, offset) -> dt.datetime | None:
    """EXIF "YYYY:MM:DD HH:MM:SS" (+ optional "+HH:MM" offset) as an aware datetime."""
    v = _text(value)
    if not v:
        return None
    try:
        t = dt.datetime.strptime(v[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None  # "0000:00:00 00:00:00" and other placeholders cameras write
    tz = dt.timezone.utc
    off = _text(offset)
    if off and len(off) == 6 and off[0] in "+-" and off[3] == ":":
        try:
            mins = int(off[1:3]) * 60 + int(off[4:6])
            tz = dt.timezone(dt.timedelta(minutes=mins if off[0] == "+" else -mins))
        except ValueError:
            pass
    return t.replace(tzinfo=tz)


def _degrees(dms, ref, limit: float) -> float | None:
    try:
        d, m, s = (float(x) for x in dms)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    v = d + m / 60 + s / 3600
    if _text(ref) in ("S", "W"):
        v = -v
    if not (-limit <= v <= limit) or v != v:  # out of range or NaN: not a position
        return None
    return round(v, 7)


def read_meta(im) -> PhotoMeta:
    """The metadata of an opened PIL image (call before any transpose; never raises)."""
    try:
        exif = im.getexif()
    except Exception:  # noqa: BLE001 - a corrupt EXIF block is no metadata, not a failed photo
        return PhotoMeta()
    if not exif:
        return PhotoMeta()
    try:
        sub = exif.get_ifd(EXIF_IFD)
    except Exception:  # noqa: BLE001
        sub = {}
    try:
        gps = exif.get_ifd(GPS_IFD)
    except Exception:  # noqa: BLE001
        gps = {}
    taken = _when(sub.get(DATETIME_ORIGINAL), sub.get(OFFSET_TIME_ORIGINAL)) or _when(exif.get(DATETIME), None)
    lat = _degrees(gps.get(GPS_LAT), gps.get(GPS_LAT_REF), 90.0)
    lon = _degrees(gps.get(GPS_LON), gps.get(GPS_LON_REF), 180.0)
    if lat is None or lon is None or (lat == 0.0 and lon == 0.0):  # (0, 0) is a GPS without a fix
        lat = lon = None
    return PhotoMeta(taken, _text(exif.get(MAKE)), _text(exif.get(MODEL)), lat, lon)
