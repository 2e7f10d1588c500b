// The dispatch board: drag a job (or select it and press Enter) to move it, and keep the
// board live by asking the server every few seconds whether its change feed moved on.
(function () {
  "use strict";
  const root = document.getElementById("board");
  if (!root) return;
  const grid = document.getElementById("board-grid");
  const status = document.getElementById("board-status");
  const dialog = document.getElementById("move-dialog");
  const form = document.getElementById("move-form");
  const csrf = root.querySelector("input[name=csrfmiddlewaretoken]").value;
  const POLL_MS = 2000;
  let selected = null;
  let busy = false;

  function board() { return grid.querySelector(".fs-board"); }
  function say(text) { status.textContent = text; }

  function refresh() {
    const url = new URL(root.dataset.gridUrl, location.href);
    url.searchParams.set("fragment", "1");
    url.searchParams.set("day", root.dataset.day);
    if (root.dataset.query) url.searchParams.set("q", root.dataset.query);
    return fetch(url, { credentials: "same-origin" })
      .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
      .then((html) => {
        const focused = document.activeElement && document.activeElement.dataset.id;
        grid.innerHTML = html;
        if (focused) {
          const again = grid.querySelector(`.fs-block[data-id="${focused}"]`);
          if (again) again.focus();
        }
      });
  }

  function move(block, username, start) {
    const body = {
      work_order_id: block.dataset.id,
      version: Number(block.dataset.version),
      day: root.dataset.day,
    };
    if (username !== null) body.assigned_to = username;
    if (start) body.start = start;
    say("Moving " + block.dataset.title + "…");
    return fetch(root.dataset.moveUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf },
      body: JSON.stringify(body),
    })
      .then((r) => r.json().then((answer) => ({ ok: r.ok, answer })))
      .then(({ ok, answer }) => {
        say(ok ? "Moved " + block.dataset.title + "." : answer.detail);
        return refresh();
      })
      .catch(() => say("The server did not answer; nothing was moved."));
  }

  function timeAt(track, clientX) {
    const b = board();
    const first = Number(b.dataset.firstHour);
    const last = Number(b.dataset.lastHour);
    const box = track.getBoundingClientRect();
    const share = Math.min(Math.max((clientX - box.left) / box.width, 0), 1);
    const minutes = Math.round((first * 60 + share * (last - first) * 60) / 15) * 15;
    const clamped = Math.min(minutes, 23 * 60 + 45);
    const hh = String(Math.floor(clamped / 60)).padStart(2, "0");
    const mm = String(clamped % 60).padStart(2, "0");
    return hh + ":" + mm;
  }

  grid.addEventListener("dragstart", (event) => {
    const block = event.target.closest(".fs-block");
    if (!block) return;
    event.dataTransfer.setData("text/plain", block.dataset.id);
    event.dataTransfer.effectAllowed = "move";
  });
  grid.addEventListener("dragover", (event) => {
    const track = event.target.closest(".fs-drop");
    if (!track) return;
    event.preventDefault();
    track.classList.add("fs-over");
  });
  grid.addEventListener("dragleave", (event) => {
    const track = event.target.closest(".fs-drop");
    if (track) track.classList.remove("fs-over");
  });
  grid.addEventListener("drop", (event) => {
    const track = event.target.closest(".fs-drop");
    if (!track) return;
    event.preventDefault();
    track.classList.remove("fs-over");
    const dragged = CSS.escape(event.dataTransfer.getData("text/plain"));
    const block = grid.querySelector(`.fs-block[data-id="${dragged}"]`);
    if (!block) return;
    const row = track.closest(".fs-row");
    const start = block.dataset.start ? timeAt(track, event.clientX) : null;
    move(block, row.dataset.username, start);
  });

  // The keyboard's way, and a click's: select a job, choose technician and time.
  grid.addEventListener("click", (event) => {
    const block = event.target.closest(".fs-block");
    if (!block) return;
    selected = block;
    grid.querySelectorAll(".fs-selected").forEach((b) => b.classList.remove("fs-selected"));
    block.classList.add("fs-selected");
    document.getElementById("move-what").textContent = block.dataset.title;
    document.getElementById("move-technician").value = block.closest(".fs-row").dataset.username;
    document.getElementById("move-start").value = block.dataset.start || "";
    document.getElementById("move-open").href = block.dataset.url;
    dialog.showModal();
  });
  form.addEventListener("submit", (event) => {
    const choice = event.submitter ? event.submitter.value : "move";
    if (choice !== "move" || !selected) return;
    const username = document.getElementById("move-technician").value;
    const start = document.getElementById("move-start").value || null;
    move(selected, username, start);
  });

  // Live: one cheap question every few seconds; the grid is fetched again only on news.
  function poll() {
    if (busy || document.hidden) return;
    busy = true;
    const url = new URL(root.dataset.changesUrl, location.href);
    url.searchParams.set("after", board().dataset.cursor);
    fetch(url, { credentials: "same-origin" })
      .then((r) => {
        // A signed-out session answers with the login page: say so instead of going quiet.
        if (!(r.headers.get("Content-Type") || "").includes("application/json")) {
          say("This board is no longer live: sign in again and reload.");
          return null;
        }
        return r.json().then((answer) => (answer.changed && !dialog.open ? refresh() : null));
      })
      .catch(() => null)
      .finally(() => { busy = false; });
  }
  setInterval(poll, POLL_MS);
})();
