"""Videos by propagation (issue 33), as a user meets them: a red circle passes behind a square for
about a second and comes back as the same object track, with either bundled SAM family; a library
indexed before propagation keeps linking (and its videos' fingerprints) until told otherwise."""

import pytest

from segsearch.eval.videos import scripted_video, write_mp4
from segsearch.settings import Settings

STEP = 0.5  # the default --video-fps 2
# listed first, so it passes behind: the circle crosses the frame in 4.5 s and is less than half
# visible for ~1 s (the square's side over the circle's speed: 65 px at 64 px/s)
BEHIND = [
    ("red", "circle", 0.0, 4.5, (0.05, 0.5), (0.95, 0.5), 0.15),
    ("blue", "square", 0.0, 5.0, (0.5, 0.5), (0.5, 0.5), 0.27),
]


@pytest.mark.parametrize("sam", ["sam-shapes-tiny", "sam2-shapes-tiny"])
def test_an_object_hidden_for_a_second_comes_back_as_the_same_track(sam, tmp_path):
    from segsearch.library import Library
    from segsearch.masks import decode_rle
    from segsearch.store.tracks import track_frames, video_segments

    video = scripted_video(BEHIND, seed=3, duration_s=5.0)
    path = write_mp4(video, tmp_path / "behind.mp4")
    times = [k * STEP for k in range(10)]
    (circle,) = [g for g in video.truth(times) if g["label"] == ("red", "circle")]
    seen = sorted(circle["masks"])
    gap = [t for t in times if seen[0] < t < seen[-1] and t not in circle["masks"]]
    assert 1 <= len(gap) <= 2  # hidden (less than half visible) for 0.5-1 s of samples
    before = [t for t in seen if t < gap[0]]
    after = [t for t in seen if t > gap[-1]]

    s = Settings(data=tmp_path / "data", sam=sam, clip="clip-shapes-tiny", offline=True)
    assert s.video_tracking == "propagate"  # the default
    with Library(settings=s) as lib:
        assert lib.index([path]).indexed == 1
        (image,) = lib.catalog.images_by_status("indexed")
        tracks = video_segments(lib.catalog, image.id)[0]
        frames = track_frames(lib.catalog, [r.id for r in tracks])

    def iou(a, b):
        return (a & b).sum() / max(1, (a | b).sum())

    def follows(track_id, when):  # the track's mask is the circle's at every one of these times
        got = {f.t: decode_rle(f.rle) for f in frames[track_id]}
        return all(t in got and iou(got[t], circle["masks"][t]) >= 0.5 for t in when)

    assert [r.id for r in tracks if follows(r.id, before[-2:]) and follows(r.id, after[:2])], (
        "no track follows the circle across its occlusion: "
        f"{[(r.start_s, r.end_s) for r in tracks]}, circle seen at {seen}"
    )


def test_a_library_indexed_before_propagation_keeps_linking():
    """Its record has no tracking key: it recalls `link`, and linking's video settings are the
    ones it recorded (so its videos' fingerprints, and its videos, stay as they are)."""
    from segsearch.record import Recorded, recalled

    old = {"fps": 2.0, "min_track_s": 1.0, "keyframe_s": 2.0, "vector": "mean"}
    rec = Recorded(sam={"source": "sam-shapes-tiny"}, clip={}, amg={}, crop={}, clips=[], video=old)
    assert recalled(rec)["video_tracking"] == "link"
    assert Settings(video_tracking="link").video_params() == old
    assert Settings().video_params() == {**old, "tracking": "propagate", "refresh_s": 20.0}
    # one indexed when propagation refreshed every 10 s keeps that
    rec = Recorded(rec.sam, {}, {}, {}, [], video={**old, "tracking": "propagate", "refresh_s": 10.0})
    assert recalled(rec)["video_tracking"] == "propagate" and recalled(rec)["video_refresh_seconds"] == 10.0
