"""Voice activity detection: framing, per-frame speech classifiers and the utterance segmenter.

Modules: `framing` (any chunk sizes -> exact frames, frame energy), `base` (the classifier
protocol and the errors), `webrtc` and `silero` (classifiers), `segmenter` (frames ->
SpeechStarted / SpeechEnded).

Errors (all in `vad.base`)::

    VadError
     +-- VadConfigError      a setting is invalid (frame size, aggressiveness, ...): fix the setting
     +-- FrameError          a frame has the wrong shape or length: feed frames from a Framer
     +-- BackendUnavailableError   a classifier's model or runtime is missing: install it
"""
