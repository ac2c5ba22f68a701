// Review page: upload one scan, show the service's answer. No framework, no CDN, no build step.
"use strict";

const $ = (id) => document.getElementById(id);

function show(element, visible) {
  element.hidden = !visible;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function render(body, file) {
  const probability = body.effusion_probability;
  $("probability").textContent = (probability * 100).toFixed(1) + " %";
  $("label").textContent = body.label;
  $("probability").className = "big" + (body.label === "effusion" ? " effusion" : "");
  $("threshold").textContent = (body.threshold * 100).toFixed(1) + " %";
  $("model").textContent = `${body.model.name} ${body.model.version} (sha256 ${body.model.sha256.slice(0, 12)}…)`;
  $("provider").textContent = body.execution_provider;
  const input = body.input;
  $("input").textContent = `${input.format.toUpperCase()} ${input.width}×${input.height} ${input.mode}` +
    (input.converted ? " (colour converted to grayscale)" : "");
  $("timing").textContent = `${body.timing_ms.total.toFixed(0)} ms`;

  const heatmap = body.heatmap;
  show($("overlay"), Boolean(heatmap));
  show($("no-heatmap"), $("heatmap").checked && !heatmap);
  if (heatmap) {
    $("overlay").src = "data:image/png;base64," + heatmap.overlay_png;
  }
  const previewable = input.format !== "dicom";
  show($("preview"), !heatmap && previewable);
  if (!heatmap && previewable) {
    $("preview").src = URL.createObjectURL(file);
  }
  show($("result"), true);
}

async function score(file) {
  setStatus(`Scoring ${file.size.toLocaleString()} bytes…`);
  show($("result"), false);
  const form = new FormData();
  form.append("file", file);
  const headers = {};
  const key = $("api-key").value.trim();
  if (key) {
    headers["Authorization"] = "Bearer " + key;
  }
  const url = "/predict" + ($("heatmap").checked ? "?heatmap=true" : "");
  try {
    const response = await fetch(url, { method: "POST", body: form, headers });
    const body = await response.json();
    if (!response.ok) {
      const error = body.error || { code: "http_" + response.status, message: response.statusText };
      setStatus(`${error.code}: ${error.message}`, true);
      return;
    }
    render(body, file);
    setStatus(`Done (request ${body.request_id}).`);
  } catch (error) {
    setStatus("The service could not be reached: " + error, true);
  }
}

function init() {
  const drop = $("drop");
  $("file").addEventListener("change", () => {
    if ($("file").files.length) score($("file").files[0]);
  });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length) score(event.dataTransfer.files[0]);
  });
}

document.addEventListener("DOMContentLoaded", init);
