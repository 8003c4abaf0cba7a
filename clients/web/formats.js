// Transcript exports of the page (SRT, WebVTT), cut into cues as clients/formats.py cuts them:
// a final longer than two lines is split at word boundaries by its word timings, lines wrap
// at spaces, and WebVTT cue text is escaped. With speakers (diarize=true) a final is first cut
// into runs of one speaker and no cue spans two: text lines and SRT cues start "[Speaker N] ",
// WebVTT cues "<v Speaker N>". Pure: tests/test_web_formats.py runs it in Node beside the
// Python module and expects the same documents.

export const MAX_LINE_CHARS = 42;
export const MAX_CUE_LINES = 2;

// "HH:MM:SS<separator>mmm"
export function clock(seconds, separator) {
  const totalMs = Math.max(0, Math.round(seconds * 1000));
  const h = Math.floor(totalMs / 3600000);
  const m = Math.floor((totalMs % 3600000) / 60000);
  const s = Math.floor((totalMs % 60000) / 1000);
  const ms = totalMs % 1000;
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(h)}:${pad(m)}:${pad(s)}${separator}${pad(ms, 3)}`;
}

// A final Results message as the exports need it ({startS, endS, text, words: [{text, startS,
// speaker}]}, speaker null without diarization), in session time (offsetS: where this
// connection's stream time 0 lies); null for an empty transcript.
export function finalOf(message, offsetS = 0) {
  const alternative = (message.channel && message.channel.alternatives && message.channel.alternatives[0]) || {};
  const text = (alternative.transcript || "").trim();
  if (!text) return null;
  const startS = offsetS + (message.start || 0);
  const words = (alternative.words || []).map((word) => ({
    text: word.punctuated_word || word.word || "",
    startS: offsetS + (word.start || 0),
    speaker: Number.isInteger(word.speaker) ? word.speaker : null,
  }));
  const endS = offsetS + ((message.start || 0) + (message.duration || 0));
  return { startS, endS, text, words };
}

// "Speaker N": the WebVTT voice name, and inside brackets the SRT/text label.
export function speakerName(speaker) {
  return `Speaker ${speaker}`;
}

// "[Speaker N]", or "" without a speaker.
export function speakerTag(speaker) {
  return speaker === null || speaker === undefined ? "" : `[${speakerName(speaker)}]`;
}

function labelled(speaker, text) {
  const tag = speakerTag(speaker);
  return tag ? `${tag} ${text}` : text;
}

// Consecutive words with the same speaker (one run when no word has one).
export function speakerRuns(words) {
  const runs = [];
  for (const word of words) {
    const last = runs[runs.length - 1];
    if (last && last[last.length - 1].speaker === word.speaker) last.push(word);
    else runs.push([word]);
  }
  return runs;
}

function runText(run) {
  return run.map((word) => word.text).join(" ");
}

// Consecutive words ({text, startS}) in runs whose text, after a tagChars-long speaker tag
// when there is one, wraps (as wrapLines does) into at most maxLines lines.
function groupWords(words, maxLines, tagChars = 0) {
  const groups = [];
  let current = [];
  let lines = 0;
  let lineChars = 0;
  for (const word of words) {
    const chars = word.text.length;
    if (current.length && lineChars + 1 + chars <= MAX_LINE_CHARS) {
      lineChars += 1 + chars; // same line
    } else if (current.length && lines < maxLines) {
      lines += 1; // next line of this cue
      lineChars = chars;
    } else {
      if (current.length) groups.push(current);
      current = []; // first line of a new cue
      lines = 1;
      lineChars = chars;
      if (tagChars && tagChars + 1 + chars <= MAX_LINE_CHARS) lineChars += tagChars + 1; // after the tag
      else if (tagChars) lines += 1; // the tag has the first line to itself
    }
    current.push(word);
  }
  if (current.length) groups.push(current);
  return groups;
}

// The cues ({startS, endS, text, speaker}) of one final ({startS, endS, text, words}); a cue
// never spans two speakers and fits maxLines with its speaker tag.
export function cuesOf(final, maxLines = MAX_CUE_LINES) {
  const text = final.text.trim();
  if (!text) return [];
  const endS = Math.max(final.startS, final.endS);
  const runs = speakerRuns(final.words || []);
  if (runs.length <= 1) {
    const speaker = runs.length ? runs[0][0].speaker : null;
    if (wrapLines(labelled(speaker, text)).split("\n").length <= maxLines || !runs.length) {
      return [{ startS: final.startS, endS, text, speaker }];
    }
  }
  const groups = runs.flatMap((run) => groupWords(run, maxLines, speakerTag(run[0].speaker).length));
  const starts = [final.startS];
  for (const group of groups.slice(1)) {
    starts.push(Math.min(Math.max(group[0].startS, starts[starts.length - 1]), endS));
  }
  return groups.map((group, i) => ({
    startS: starts[i],
    endS: i + 1 < starts.length ? starts[i + 1] : endS,
    text: runText(group),
    speaker: group[0].speaker,
  }));
}

// A final as transcript lines ({speaker, startS, text}): its text, or with speakers one line
// per run; the page shows these, and toText writes them as "[Speaker N] text".
export function linesOf(final) {
  const text = final.text.trim();
  if (!text) return [];
  const runs = speakerRuns(final.words || []);
  if (runs.length <= 1) return [{ speaker: runs.length ? runs[0][0].speaker : null, startS: final.startS, text }];
  return runs.map((run, i) => ({
    speaker: run[0].speaker,
    startS: i ? Math.max(run[0].startS, final.startS) : final.startS,
    text: runText(run),
  }));
}

// Greedy wrap at spaces; a word longer than a line keeps a line of its own.
export function wrapLines(text, width = MAX_LINE_CHARS) {
  const lines = [];
  let line = "";
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else {
      line = line ? `${line} ${word}` : word;
    }
  }
  if (line) lines.push(line);
  return lines.join("\n") || text;
}

export function escapeVtt(text) {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

export function toText(finals) {
  return finals
    .flatMap((final) => linesOf(final))
    .map((line) => `${labelled(line.speaker, line.text)}\n`)
    .join("");
}

export function toSrt(finals) {
  return finals
    .flatMap((final) => cuesOf(final))
    .map((cue, i) => `${i + 1}\n${clock(cue.startS, ",")} --> ${clock(cue.endS, ",")}\n${wrapLines(labelled(cue.speaker, cue.text))}\n\n`)
    .join("");
}

export function toVtt(finals) {
  const cues = finals.flatMap((final) => cuesOf(final));
  const blocks = cues.map((cue) => {
    const voice = cue.speaker === null || cue.speaker === undefined ? "" : `<v ${speakerName(cue.speaker)}>`;
    return `${clock(cue.startS, ".")} --> ${clock(cue.endS, ".")}\n${voice}${escapeVtt(wrapLines(cue.text))}\n\n`;
  });
  return "WEBVTT\n\n" + blocks.join("");
}
