// The topology page: poll /api/status every 2 s and redraw the boxes in place. The page as
// served is the same drawing, rendered on the server, so it reads without this script.
"use strict";

(function () {
  const EVERY_MS = 2000;
  const main = document.querySelector(".topology");
  if (!main) return;
  const instance = main.dataset.instance;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function box(kind, role, name, detail) {
    const li = el("li", "box " + kind);
    li.append(el("span", "role", role), el("strong", "name", name), el("span", "detail", detail));
    return li;
  }

  function followerDetail(f) {
    if (!f.reachable) return "unreachable";
    if (f.lag_bytes === null || f.lag_bytes === undefined) return "lag unknown";
    let text = "lag " + f.lag_bytes + " bytes";
    // lag_seconds is Redis's master_last_io_seconds_ago: when the follower last heard from its
    // leader, not how far behind it is (the bytes say that).
    if (f.lag_seconds !== null && f.lag_seconds !== undefined) {
      text += " · last heard " + f.lag_seconds + " s ago";
    }
    return text;
  }

  function sentinelDetail(s) {
    if (!s.reachable) return "unreachable";
    return s.leader ? "names " + s.leader + " leader" : "answers, names no leader";
  }

  function sentinelBox(s) {
    const li = box("sentinel" + (s.reachable ? "" : " down"), "Sentinel", s.address, sentinelDetail(s));
    li.dataset.address = s.address;
    return li;
  }

  // Drawn only where the page has a place for them: a frontend follows sentinels or not for
  // its whole life, and the page as served says which.
  function drawSentinels(sentinel) {
    const list = document.getElementById("sentinels");
    if (!list || !sentinel) return;
    document.getElementById("sentinel-service").textContent = sentinel.service;
    const boxes = sentinel.sentinels.map(sentinelBox);
    if (boxes.length === 0) boxes.push(el("li", "box empty", "None configured."));
    list.replaceChildren(...boxes);
  }

  function frontendBox(f) {
    const served = f.name === instance;
    const detail =
      f.requests === undefined ? "starting" : f.requests + " requests · " + f.live_clients + " live";
    const li = box(
      "frontend" + (served ? " served" : ""),
      "Frontend" + (served ? " · served this page" : ""),
      f.name,
      detail,
    );
    li.dataset.name = f.name;
    return li;
  }

  function draw(status) {
    const frontends = (status.frontends || []).slice();
    if (!frontends.some((f) => f.name === instance)) frontends.unshift({ name: instance });
    document.getElementById("frontends").replaceChildren(...frontends.map(frontendBox));
    document.getElementById("frontend-count").textContent = String(frontends.length);

    const leader = status.leader;
    const leaderBox = box(
      "leader" + (leader.reachable ? "" : " down"),
      "Leader",
      leader.url,
      leader.reachable ? "takes every write" : "unreachable",
    );
    leaderBox.dataset.url = leader.url;
    document.getElementById("leader").replaceChildren(leaderBox);

    const followers = status.followers.map((f) => {
      const li = box(
        "follower" + (f.reachable ? "" : " down"),
        "Follower · replica",
        f.url,
        followerDetail(f),
      );
      li.dataset.url = f.url;
      return li;
    });
    if (followers.length === 0) {
      followers.push(el("li", "box empty", "No followers: reads go to the leader."));
    }
    document.getElementById("followers").replaceChildren(...followers);
    drawSentinels(status.sentinel);

    const count = status.message_count === null ? "Unknown number of" : status.message_count;
    document.getElementById("summary").textContent =
      count + " messages · " + status.mode + " store · reading from the " + status.reading_from + ".";
  }

  const live = document.getElementById("live");
  const updated = document.getElementById("updated");

  async function poll() {
    try {
      const response = await fetch("/api/status", { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error("status " + response.status);
      draw(await response.json());
      live.hidden = false;
      updated.classList.remove("stale");
      updated.textContent = "Updated " + new Date().toLocaleTimeString() + ", every 2 seconds.";
    } catch (error) {
      updated.classList.add("stale");
      updated.textContent = "Cannot reach this frontend right now; showing the last drawing.";
    } finally {
      setTimeout(poll, EVERY_MS);
    }
  }

  setTimeout(poll, EVERY_MS);
})();
