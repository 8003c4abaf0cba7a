// streamscribe live-captioning page: microphone -> AudioWorklet (16 kHz PCM16) -> WebSocket
// (/v1/listen, PROTOCOL.md) -> captions. All URLs are relative to the page, so it works
// behind TLS and path-prefix proxies.

import { finalOf, linesOf, speakerName, toSrt, toText, toVtt } from "./formats.js";

const TARGET_RATE_HZ = 16000;
const FRAME_MS = 100;
const MAX_PENDING_S = 30; // audio kept while reconnecting
const BACKOFF_INITIAL_MS = 500;
const BACKOFF_MAX_MS = 15000;
const STABLE_CONNECTION_MS = 10000; // the backoff starts over only after a connection lasted this
const FINISH_TIMEOUT_MS = 30000;
const CAPTION_FINALS_SHOWN = 6;
const SPEAKER_COLOURS = 6; // .speaker-0 ... .speaker-5 in style.css, cycling by speaker number

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("controls"),
  start: $("start"),
  stop: $("stop"),
  mic: $("mic"),
  apiKey: $("api-key"),
  language: $("language"),
  languageField: $("language-field"),
  diarize: $("diarize"),
  status: $("status"),
  latency: $("latency"),
  level: $("level"),
  message: $("message"),
  captionFinals: $("caption-finals"),
  captionInterim: $("caption-interim"),
  captionLanguage: $("caption-language"),
  transcript: $("transcript"),
};

const session = {
  running: false, // capturing and wanting a connection
  finishing: false, // CloseStream sent, waiting for the server to close
  ws: null,
  everOpened: false,
  failures: 0,
  openedAtMs: null,
  reconnectTimer: null,
  finishTimer: null,
  audio: null, // {context, stream, source, node, sink}
  pending: [], // frames captured while not connected
  samplesSent: 0, // over the whole session, all connections
  connectionOffsetS: 0, // session time of this connection's stream time 0
  connectionSamples: 0,
  sendLog: [], // [{endS, atMs}] for the current connection, for latency
  onFlushed: null, // called when the worklet has posted its partial last frame
};

const finals = []; // {startS, endS, text, words: [{text, startS}]} in session time

// ---------- small helpers ----------

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text || state;
}

function showMessage(text) {
  ui.message.textContent = text;
  ui.message.hidden = !text;
}

function shortClock(seconds) {
  const total = Math.max(0, Math.floor(seconds));
  const m = Math.floor(total / 60);
  const s = total % 60;
  return `${String(m).padStart(2, "0")}:${String(s).padStart(2, "0")}`;
}

function wsUrl(path, params) {
  const url = new URL(path, window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  for (const [key, value] of Object.entries(params)) url.searchParams.set(key, value);
  return url.toString();
}

// ---------- models / language picker ----------

async function loadModels() {
  try {
    const response = await fetch("v1/models", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const data = await response.json();
    const models = Array.isArray(data) ? data : data.models || [];
    const model = models.find((m) => m.default) || models[0];
    const languages = (model && model.languages) || [];
    const multilingual = Boolean(model && (model.multilingual || languages.length > 1));
    ui.languageField.hidden = !multilingual;
    if (multilingual) {
      ui.language.replaceChildren(new Option("detect automatically", "auto"));
      for (const code of languages) ui.language.append(new Option(code, code));
    }
    return true;
  } catch (error) {
    ui.languageField.hidden = true;
    return false;
  }
}

// ---------- microphones ----------

async function refreshMicrophones() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
  const devices = await navigator.mediaDevices.enumerateDevices();
  const chosen = ui.mic.value;
  const options = [new Option("default microphone", "")];
  let index = 1;
  for (const device of devices) {
    if (device.kind !== "audioinput" || device.deviceId === "default" || !device.deviceId) continue;
    options.push(new Option(device.label || `microphone ${index}`, device.deviceId));
    index += 1;
  }
  ui.mic.replaceChildren(...options);
  if (options.some((o) => o.value === chosen)) ui.mic.value = chosen;
}

// ---------- capture ----------

async function startCapture() {
  if (!navigator.mediaDevices || !window.AudioWorkletNode) {
    throw new Error("This browser cannot capture audio here (it needs https:// or localhost).");
  }
  const constraints = {
    audio: {
      deviceId: ui.mic.value ? { exact: ui.mic.value } : undefined,
      channelCount: 1,
      echoCancellation: false,
      noiseSuppression: false,
      autoGainControl: false,
    },
  };
  const stream = await navigator.mediaDevices.getUserMedia(constraints);
  const context = new AudioContext();
  await context.audioWorklet.addModule("worklet.js");
  const source = context.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(context, "pcm16-capture", {
    numberOfOutputs: 1,
    processorOptions: { targetRate: TARGET_RATE_HZ, frameMs: FRAME_MS },
  });
  const sink = context.createGain(); // silent: keeps the graph pulling without echoing the mic
  sink.gain.value = 0;
  node.port.onmessage = (event) => onFrame(event.data);
  source.connect(node);
  node.connect(sink);
  sink.connect(context.destination);
  if (context.state === "suspended") await context.resume();
  session.audio = { context, stream, source, node, sink };
  refreshMicrophones().catch(() => {});
}

function stopCapture() {
  const audio = session.audio;
  session.audio = null;
  if (!audio) return;
  audio.node.port.onmessage = null;
  audio.source.disconnect();
  audio.node.disconnect();
  for (const track of audio.stream.getTracks()) track.stop();
  audio.context.close().catch(() => {});
  ui.level.style.width = "0%";
}

function onFrame({ pcm, rms, peak, flushed }) {
  if (flushed) {
    if (session.onFlushed) session.onFlushed();
    return;
  }
  const db = 20 * Math.log10(Math.max(rms, 1e-5)); // -100..0 dBFS
  ui.level.style.width = `${Math.max(0, Math.min(100, ((db + 60) / 60) * 100))}%`;
  ui.level.title = `peak ${Math.round(peak * 100)}%`;
  if (!session.running) return;
  const ws = session.ws;
  if (ws && ws.readyState === WebSocket.OPEN) {
    sendFrame(ws, pcm);
  } else {
    session.pending.push(pcm);
    const maxFrames = (MAX_PENDING_S * 1000) / FRAME_MS;
    if (session.pending.length > maxFrames) session.pending.shift();
  }
}

function sendFrame(ws, pcm) {
  ws.send(pcm);
  const samples = pcm.byteLength / 2;
  session.samplesSent += samples;
  session.connectionSamples += samples;
  session.sendLog.push({ endS: session.connectionSamples / TARGET_RATE_HZ, atMs: performance.now() });
  if (session.sendLog.length > 1200) session.sendLog.splice(0, 600);
}

// ---------- connection ----------

function connect() {
  const params = {
    encoding: "linear16",
    sample_rate: String(TARGET_RATE_HZ),
    channels: "1",
    interim_results: "true",
  };
  if (!ui.languageField.hidden && ui.language.value) params.language = ui.language.value;
  if (ui.diarize.checked) params.diarize = "true";
  const key = ui.apiKey.value.trim();
  const url = wsUrl("v1/listen", params);
  setStatus(session.everOpened ? "reconnecting" : "connecting", session.everOpened ? "reconnecting…" : "connecting…");
  const ws = key ? new WebSocket(url, ["token", key]) : new WebSocket(url);
  ws.binaryType = "arraybuffer";
  session.ws = ws;
  let opened = false;

  ws.onopen = () => {
    opened = true;
    session.everOpened = true;
    session.openedAtMs = performance.now();
    session.connectionOffsetS = session.samplesSent / TARGET_RATE_HZ;
    session.connectionSamples = 0;
    session.sendLog = [];
    setStatus("live", "live");
    showMessage("");
    const backlog = session.pending;
    session.pending = [];
    for (const pcm of backlog) sendFrame(ws, pcm);
    if (!session.running) finish();
  };
  ws.onmessage = (event) => {
    if (typeof event.data !== "string") return;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    onServerMessage(message);
  };
  ws.onclose = (event) => onClose(ws, event, opened);
}

function onServerMessage(message) {
  switch (message.type) {
    case "Results":
      onResults(message);
      break;
    case "Error":
      showMessage(`${message.code}: ${message.message}`);
      break;
    default:
      break;
  }
}

// The languages a result names (language=auto/multi streams), most words first; [] if none.
function languagesOf(alternative) {
  return Array.isArray(alternative.languages) ? alternative.languages.filter((l) => typeof l === "string") : [];
}

function languageBadge(languages) {
  const badge = document.createElement("span");
  badge.className = "language";
  badge.title = "language heard";
  badge.textContent = languages.join(" ");
  return badge;
}

function onResults(message) {
  const alternative = (message.channel && message.channel.alternatives && message.channel.alternatives[0]) || {};
  const text = (alternative.transcript || "").trim();
  const endS = (message.start || 0) + (message.duration || 0);
  showLatency(endS);
  const languages = languagesOf(alternative);
  if (text && languages.length) {
    ui.captionLanguage.textContent = languages.join(" ");
    ui.captionLanguage.hidden = false;
  }
  if (message.is_final) {
    ui.captionInterim.textContent = "";
    const final = finalOf(message, session.connectionOffsetS);
    if (final) addFinal(final, languages);
  } else {
    ui.captionInterim.textContent = text;
  }
}

function showLatency(endS) {
  const log = session.sendLog;
  let low = 0;
  let high = log.length;
  while (low < high) {
    const mid = (low + high) >> 1;
    if (log[mid].endS < endS - 0.001) low = mid + 1;
    else high = mid;
  }
  if (low >= log.length) return;
  const seconds = (performance.now() - log[low].atMs) / 1000;
  ui.latency.textContent = `latency ${seconds.toFixed(2)} s`;
  ui.latency.dataset.seconds = seconds.toFixed(3);
}

function onClose(ws, event, opened) {
  if (session.ws === ws) session.ws = null;
  if (session.finishing || (!session.running && !session.reconnectTimer)) {
    clearTimeout(session.finishTimer);
    session.finishing = false;
    setStatus("stopped", "stopped");
    setButtons(false);
    return;
  }
  if (!session.running) return;
  if (!opened && !session.everOpened) {
    explainRefusal(ws.url);
    return;
  }
  if (event.code === 1007 || event.code === 1009) {
    fail(`The server closed the stream (code ${event.code}): ${event.reason || "bad audio"}.`);
    return;
  }
  scheduleReconnect(event);
}

// A browser does not see why an upgrade was refused (the 400/401 body), so ask around: is the
// server up, and with speakers asked for, does it take the same stream without diarize?
async function explainRefusal(url) {
  let detail = "the server is unreachable";
  try {
    const response = await fetch("healthz", { cache: "no-store" });
    if (response.ok) {
      detail = "the server is up but refused the stream: check the API key";
      const withoutSpeakers = new URL(url);
      if (withoutSpeakers.searchParams.get("diarize") === "true") {
        withoutSpeakers.searchParams.delete("diarize");
        if (await opens(withoutSpeakers.toString(), ui.apiKey.value.trim())) {
          detail =
            "the server refused diarize (speaker labels): it has no speaker encoder " +
            "(python -m cache fetch resemblyzer-encoder, or --speaker-model); untick Speakers";
        }
      }
    }
  } catch {
    // keep "unreachable"
  }
  fail(`Could not connect: ${detail}.`);
}

// Whether a WebSocket to url opens (closed again at once, before any audio).
function opens(url, key) {
  return new Promise((resolve) => {
    const probe = key ? new WebSocket(url, ["token", key]) : new WebSocket(url);
    const timer = setTimeout(() => {
      probe.close();
      resolve(false);
    }, 10000);
    probe.onopen = () => {
      clearTimeout(timer);
      probe.send(JSON.stringify({ type: "CloseStream" }));
      probe.close();
      resolve(true);
    };
    probe.onclose = () => {
      clearTimeout(timer);
      resolve(false);
    };
  });
}

function scheduleReconnect(event) {
  const lasted = session.openedAtMs !== null && performance.now() - session.openedAtMs >= STABLE_CONNECTION_MS;
  if (lasted) session.failures = 0;
  session.openedAtMs = null;
  session.failures += 1;
  const delayMs = Math.min(BACKOFF_MAX_MS, BACKOFF_INITIAL_MS * 2 ** (session.failures - 1));
  const reason = event.code === 1013 ? "server busy" : `connection lost (${event.code})`;
  setStatus("reconnecting", `${reason}; retrying in ${(delayMs / 1000).toFixed(1)} s`);
  session.reconnectTimer = setTimeout(() => {
    session.reconnectTimer = null;
    if (session.running) connect();
  }, delayMs);
}

function fail(text) {
  showMessage(text);
  setStatus("error", "error");
  stopSession();
  setButtons(false);
}

function finish() {
  const ws = session.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) {
    if (ws) ws.close();
    setStatus("stopped", "stopped");
    setButtons(false);
    return;
  }
  session.finishing = true;
  setStatus("finishing", "finishing…");
  ws.send(JSON.stringify({ type: "CloseStream" }));
  session.finishTimer = setTimeout(() => ws.close(), FINISH_TIMEOUT_MS);
}

function stopSession() {
  session.running = false;
  clearTimeout(session.reconnectTimer);
  session.reconnectTimer = null;
  session.pending = [];
  stopCapture();
}

function setButtons(running) {
  ui.start.disabled = running;
  ui.stop.disabled = !running;
  ui.mic.disabled = running;
  ui.apiKey.disabled = running;
  ui.language.disabled = running;
  ui.diarize.disabled = running;
}

async function start() {
  showMessage("");
  setButtons(true);
  setStatus("connecting", "starting microphone…");
  try {
    await startCapture();
  } catch (error) {
    fail(`Microphone: ${error.message || error}`);
    return;
  }
  session.running = true;
  session.everOpened = false;
  session.failures = 0;
  connect();
}

function stop() {
  ui.stop.disabled = true;
  const audio = session.audio;
  const done = () => {
    session.onFlushed = null;
    stopSession();
    finish();
  };
  if (!audio) {
    done();
    return;
  }
  // Send the last partial frame before capture stops (the worklet answers "flushed";
  // a dead worklet must not block stopping).
  session.onFlushed = done;
  audio.node.port.postMessage("flush");
  setTimeout(() => {
    if (session.onFlushed === done) done();
  }, 500);
}

// ---------- transcript ----------

// The label naming a line's speaker, coloured like the line: never colour alone.
function speakerBadge(speaker) {
  const badge = document.createElement("span");
  badge.className = "speaker";
  badge.textContent = speakerName(speaker);
  return badge;
}

function markSpeaker(element, speaker) {
  if (speaker === null) return;
  element.dataset.speaker = String(speaker);
  element.classList.add(`speaker-${speaker % SPEAKER_COLOURS}`);
}

// The big caption: the newest finals; with speakers each turn on a line of its own, named and
// in its speaker's colour.
function renderCaption() {
  const lines = finals.slice(-CAPTION_FINALS_SHOWN).flatMap((f) => linesOf(f));
  if (lines.every((line) => line.speaker === null)) {
    ui.captionFinals.textContent = lines.map((line) => line.text).join(" ");
    return;
  }
  const parts = [];
  let previous = null;
  for (const line of lines) {
    const turn = line.speaker !== null && line.speaker !== previous;
    if (parts.length) parts.push(turn ? document.createElement("br") : " ");
    const run = document.createElement("span");
    run.className = "run";
    markSpeaker(run, line.speaker);
    if (turn) run.append(speakerBadge(line.speaker));
    run.append(line.text);
    parts.push(run);
    previous = line.speaker;
  }
  ui.captionFinals.replaceChildren(...parts);
}

function addFinal(final, languages) {
  finals.push(final);
  renderCaption();
  const atBottom = ui.transcript.scrollHeight - ui.transcript.scrollTop - ui.transcript.clientHeight < 40;
  for (const line of linesOf(final)) {
    const item = document.createElement("li");
    markSpeaker(item, line.speaker);
    const time = document.createElement("time");
    time.dateTime = `PT${line.startS.toFixed(2)}S`;
    time.textContent = shortClock(line.startS);
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = line.text;
    item.append(time);
    if (languages.length) item.append(languageBadge(languages));
    if (line.speaker !== null) item.append(speakerBadge(line.speaker));
    item.append(text);
    ui.transcript.append(item);
  }
  if (atBottom) ui.transcript.scrollTop = ui.transcript.scrollHeight;
}

function transcriptText() {
  return toText(finals);
}

function download(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

async function copyTranscript() {
  const text = transcriptText();
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = document.createElement("textarea");
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  ui.status.title = "transcript copied";
}

function stamp() {
  return new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-");
}

// ---------- wiring ----------

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (!session.running) start();
});
ui.stop.addEventListener("click", stop);
$("copy").addEventListener("click", copyTranscript);
$("download-txt").addEventListener("click", () => download(`transcript-${stamp()}.txt`, "text/plain", transcriptText()));
$("download-srt").addEventListener("click", () => download(`transcript-${stamp()}.srt`, "application/x-subrip", toSrt(finals)));
$("download-vtt").addEventListener("click", () => download(`transcript-${stamp()}.vtt`, "text/vtt", toVtt(finals)));
$("clear").addEventListener("click", () => {
  finals.length = 0;
  ui.transcript.replaceChildren();
  ui.captionFinals.textContent = "";
  ui.captionInterim.textContent = "";
  ui.captionLanguage.hidden = true;
});
if (navigator.mediaDevices && navigator.mediaDevices.addEventListener) {
  navigator.mediaDevices.addEventListener("devicechange", () => refreshMicrophones().catch(() => {}));
}

setButtons(false);
setStatus("idle", "idle");
refreshMicrophones().catch(() => {});
loadModels().then((ok) => {
  if (!ok) setTimeout(loadModels, 3000);
});
