"""Voice activity detection: framing, per-frame speech classifiers and the utterance segmenter.

Modules: `framing` (any chunk sizes -> exact frames, frame energy), `base` (the classifier
protocol and the errors), `webrtc` and `silero` (classifiers; `noisefloor` tracks the
background level for webrtc's SNR gate), `segmenter` (frames -> SpeechStarted /
SpeechEnded). The defaults were tuned with `python -m bench.vad` (see bench/vad.py).

Errors (all in `vad.base`)::

    VadError
     +-- VadConfigError      a setting is invalid (frame size, aggressiveness, ...): fix the setting
     +-- FrameError          a frame has the wrong shape or length: feed frames from a Framer
     +-- BackendUnavailableError   a classifier's model or runtime is missing: install it
"""
