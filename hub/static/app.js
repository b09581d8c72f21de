// FarmEye dashboard: latest photos with their verdicts, alerts, and the live
// event stream. The token comes from ?token= or is asked for once and kept
// in this browser's localStorage.
"use strict";

const MAX_CAPTURES = 24;
const MAX_EVENTS = 200;

function currentToken() {
  const fromUrl = new URLSearchParams(location.search).get("token");
  if (fromUrl) {
    localStorage.setItem("farmeye-token", fromUrl);
    history.replaceState(null, "", location.pathname);
    return fromUrl;
  }
  return localStorage.getItem("farmeye-token");
}

const token = currentToken();

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
  if (response.status === 401) {
    askForToken();
    throw new Error("token refused");
  }
  return response.json();
}

function askForToken() {
  document.getElementById("login").hidden = false;
  setStatus("sign in");
}

function setStatus(text) {
  document.getElementById("status").textContent = text;
}

function verdictText(verdict) {
  if (!verdict || !verdict.label) return "…";
  const score = verdict.scores ? verdict.scores[verdict.label] : null;
  return score == null ? verdict.label : `${verdict.label} ${(score * 100).toFixed(0)}%`;
}

function captureCard(capture) {
  const card = document.createElement("figure");
  card.className = "capture";
  card.id = `capture-${capture.id}`;
  const image = document.createElement("img");
  image.loading = "lazy";
  image.alt = `capture ${capture.id}`;
  image.src = `${capture.links.thumbnail}?token=${encodeURIComponent(token)}`;
  const caption = document.createElement("figcaption");
  card.append(image, caption);
  updateCard(card, capture);
  return card;
}

function updateCard(card, capture) {
  const caption = card.querySelector("figcaption");
  // A triage verdict once shown stays: a read that an older request answered
  // late, or that came before the hub stored the verdict, does not have it.
  card.triage = capture.triage || card.triage;
  const triage = card.triage || {};
  const analysis = capture.analysis || {};
  caption.innerHTML = "";
  const lines = [
    [`#${capture.id} · coop ${capture.coop_id}`, ""],
    [`triage: ${verdictText(triage)}`, `label-${triage.label || ""}`],
    [`analysis: ${verdictText(analysis)}`, `label-${analysis.label || ""}`],
  ];
  for (const [text, cls] of lines) {
    const line = document.createElement("div");
    line.textContent = text;
    if (cls) line.className = cls;
    caption.append(line);
  }
}

async function loadCaptures() {
  const page = await api(`/api/captures?limit=${MAX_CAPTURES}`);
  const grid = document.getElementById("captures");
  grid.replaceChildren(...page.captures.map(captureCard));
}

async function loadAlerts() {
  const page = await api("/api/alerts?limit=10");
  const list = document.getElementById("alerts");
  list.replaceChildren(...page.alerts.map((alert) => {
    const item = document.createElement("li");
    item.textContent = `${alert.created_at} coop ${alert.coop_id}: ${alert.message}`;
    return item;
  }));
  if (!page.alerts.length) list.textContent = "none";
}

async function refreshCapture(id, event) {
  const capture = await api(`/api/captures/${id}`);
  // The hub announces a triage verdict while it stores it, so the capture
  // read back may not carry it yet: the event's own verdict stands in.
  if (event.type === "triage" && event.label && !capture.triage) {
    capture.triage = { label: event.label, scores: event.scores };
  }
  const grid = document.getElementById("captures");
  const existing = document.getElementById(`capture-${id}`);
  if (existing) {
    updateCard(existing, capture);
    return;
  }
  grid.prepend(captureCard(capture));
  while (grid.children.length > MAX_CAPTURES) grid.lastChild.remove();
}

function showEvent(event) {
  const list = document.getElementById("events");
  const item = document.createElement("li");
  const what = event.label ? ` ${event.label}` : event.status ? ` ${event.status}` : "";
  item.textContent = `${event.time} ${event.type}${what}` +
    (event.capture_id ? ` capture ${event.capture_id}` : "") +
    (event.device_id ? ` ${event.device_id}` : "");
  list.prepend(item);
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

let lastEventTime = null;  // of the newest event seen: where a reconnect resumes

function connectStream(delayMs = 1000) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  let url = `${scheme}://${location.host}/ws/events?token=${encodeURIComponent(token)}`;
  if (lastEventTime) url += `&since=${encodeURIComponent(lastEventTime)}`;
  const socket = new WebSocket(url);
  socket.onopen = () => { setStatus("live"); delayMs = 1000; };
  socket.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.type !== "device" && (!lastEventTime || event.time > lastEventTime)) {
      lastEventTime = event.time;
    }
    showEvent(event);
    // Missed events only fill the log: the reload on reconnecting showed their captures.
    if (event.replay) return;
    // A read that fails (the hub going away) leaves the page as it was: the
    // reload when the stream reconnects puts it right.
    if (event.capture_id && event.type !== "alert") {
      refreshCapture(event.capture_id, event).catch(() => {});
    }
    if (event.type === "alert") loadAlerts().catch(() => {});
  };
  socket.onclose = () => {
    setStatus("reconnecting…");
    setTimeout(() => {
      loadCaptures().then(loadAlerts).catch(() => {}).then(
        () => connectStream(Math.min(delayMs * 2, 30000)));
    }, delayMs);
  };
}

document.getElementById("token-form").addEventListener("submit", (submit) => {
  submit.preventDefault();
  localStorage.setItem("farmeye-token", document.getElementById("token").value.trim());
  location.reload();
});

if (!token) {
  askForToken();
} else {
  loadCaptures().then(loadAlerts).then(() => connectStream()).catch((error) => {
    setStatus(`error: ${error.message}`);
  });
}
