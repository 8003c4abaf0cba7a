// Transcript exports of the page (SRT, WebVTT), cut into cues as clients/formats.py cuts them:
// a final longer than two lines is split at word boundaries by its word timings, lines wrap
// at spaces, and WebVTT cue text is escaped. Pure: tests/test_web_formats.py runs it in Node
// beside the Python module and expects the same documents.

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

// A final Results message as the exports need it ({startS, endS, text, words}), in session
// time (offsetS: where this connection's stream time 0 lies); null for an empty transcript.
export function finalOf(message, offsetS = 0) {
  const alternative = (message.channel && message.channel.alternatives && message.channel.alternatives[0]) || {};
  const text = (alternative.transcript || "").trim();
  if (!text) return null;
  const startS = offsetS + (message.start || 0);
  const words = (alternative.words || []).map((word) => ({
    text: word.punctuated_word || word.word || "",
    startS: offsetS + (word.start || 0),
  }));
  const endS = offsetS + ((message.start || 0) + (message.duration || 0));
  return { startS, endS, text, words };
}

// Consecutive words ({text, startS}) in runs whose text wraps (as wrapLines does) into at
// most maxLines lines.
function groupWords(words, maxLines) {
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
    }
    current.push(word);
  }
  if (current.length) groups.push(current);
  return groups;
}

// The cues ({startS, endS, text}) of one final ({startS, endS, text, words}).
export function cuesOf(final, maxLines = MAX_CUE_LINES) {
  const text = final.text.trim();
  if (!text) return [];
  const endS = Math.max(final.startS, final.endS);
  const words = final.words || [];
  if (wrapLines(text).split("\n").length <= maxLines || !words.length) {
    return [{ startS: final.startS, endS, text }];
  }
  const groups = groupWords(words, maxLines);
  const starts = [final.startS];
  for (const group of groups.slice(1)) {
    starts.push(Math.min(Math.max(group[0].startS, starts[starts.length - 1]), endS));
  }
  return groups.map((group, i) => ({
    startS: starts[i],
    endS: i + 1 < starts.length ? starts[i + 1] : endS,
    text: group.map((word) => word.text).join(" "),
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

export function toSrt(finals) {
  return finals
    .flatMap((final) => cuesOf(final))
    .map((cue, i) => `${i + 1}\n${clock(cue.startS, ",")} --> ${clock(cue.endS, ",")}\n${wrapLines(cue.text)}\n\n`)
    .join("");
}

export function toVtt(finals) {
  const cues = finals.flatMap((final) => cuesOf(final));
  const blocks = cues.map((cue) => `${clock(cue.startS, ".")} --> ${clock(cue.endS, ".")}\n${escapeVtt(wrapLines(cue.text))}\n\n`);
  return "WEBVTT\n\n" + blocks.join("");
}
