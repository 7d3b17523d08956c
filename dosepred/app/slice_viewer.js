// dosepred's linked slice views: draws the panels of dosepred/visual/panels.py on canvases.
// Wheel: zoom about the cursor; drag: pan; double-click: whole slice; click: move the crosshair there
// (sent to Python as the trigger value "click", which moves the other views); hover: the voxel's values.
// Panels of one plane share their zoom and pan (side by side, the prediction and the reference move together).

const views = new Map(); // plane -> {zoom, x, y}: kept across reruns, so a click does not reset a zoom
const painters = new Map(); // plane -> the draw functions of its panels on the page now
const CROSSHAIR = "#ffd400";

function decode(readout) {
  const bytes = Uint8Array.from(atob(readout.values), (c) => c.charCodeAt(0));
  return new Int16Array(bytes.buffer);
}

function legendElement(legend) {
  const element = document.createElement("div");
  element.className = "dp-legend";
  for (const structure of legend.structures) {
    element.insertAdjacentHTML("beforeend",
      `<span class="dp-item"><span class="dp-swatch" style="border-color:${structure.colour}"></span>${structure.label}</span>`);
  }
  if (legend.isodoses.length) {
    element.insertAdjacentHTML("beforeend",
      `<span class="dp-item"><span class="dp-swatch dp-isodose"></span>isodoses ${legend.isodoses.join(", ")}</span>`);
  }
  element.insertAdjacentHTML("beforeend",
    `<span class="dp-item"><span class="dp-swatch" style="border-color:${CROSSHAIR}"></span>crosshair</span>`);
  for (const bar of legend.bars) {
    element.insertAdjacentHTML("beforeend",
      `<span class="dp-item dp-bar-item">${bar.label}: ${bar.low}<span class="dp-bar" ` +
      `style="background:linear-gradient(to right, ${bar.colours.join(", ")})"></span>${bar.high}</span>`);
  }
  return element;
}

function panelElement(panel, number, setTriggerValue) {
  const figure = document.createElement("figure");
  figure.className = "dp-panel";
  figure.dataset.plane = panel.plane;
  figure.dataset.role = panel.role;
  const caption = document.createElement("figcaption");
  caption.textContent = panel.title;
  const canvas = document.createElement("canvas");
  canvas.className = "dp-canvas";
  const readout = document.createElement("div");
  readout.className = "dp-readout";
  figure.append(caption, canvas, readout);

  const view = views.get(panel.plane) || { zoom: 1, x: 0, y: 0 };
  views.set(panel.plane, view);
  const linked = painters.get(panel.plane) || [];
  painters.set(panel.plane, linked);
  const redraw = () => linked.forEach((paint) => paint());
  const values = panel.readouts.map(decode);
  const image = new Image();
  let width = 0;

  const scaleX = () => (width / panel.columns) * view.zoom; // screen px per image column
  const scaleY = () => scaleX() * panel.aspect;
  const toScreen = (x, y) => [(x - view.x) * scaleX(), (y - view.y) * scaleY()];
  const toImage = (event) => {
    const box = canvas.getBoundingClientRect();
    return [view.x + (event.clientX - box.left) / scaleX(), view.y + (event.clientY - box.top) / scaleY()];
  };
  const clamp = () => {
    view.zoom = Math.min(Math.max(view.zoom, 1), 12);
    view.x = Math.min(Math.max(view.x, 0), panel.columns - panel.columns / view.zoom);
    view.y = Math.min(Math.max(view.y, 0), panel.rows - panel.rows / view.zoom);
  };

  function describe(row, column) {
    const voxel = [...panel.voxel];
    voxel[panel.row_axis] = row;
    voxel[panel.column_axis] = column;
    const at = row * panel.columns + column;
    const digits = (r) => (r.scale < 1 ? 2 : 0);
    const parts = panel.readouts.map((r, i) => {
      const value = values[i][at];
      if (value === -32768) return `${r.label} –`; // no value here
      if (value === 32767) return `${r.label} > ${r.above.toFixed(digits(r))} ${r.unit}`; // over its ceiling
      return `${r.label} ${(value * r.scale).toFixed(digits(r))} ${r.unit}`;
    });
    return `voxel (${voxel.join(", ")}) · ${parts.join(" · ")}`;
  }

  function draw() {
    const ratio = window.devicePixelRatio || 1;
    width = canvas.clientWidth;
    const height = Math.round(width * (panel.rows * panel.aspect) / panel.columns);
    canvas.style.height = `${height}px`;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const context = canvas.getContext("2d");
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.fillStyle = "#000";
    context.fillRect(0, 0, width, height);
    context.imageSmoothingEnabled = false;
    const [left, top] = toScreen(0, 0);
    context.drawImage(image, left, top, panel.columns * scaleX(), panel.rows * scaleY());
    for (const line of panel.lines) {
      context.strokeStyle = line.colour;
      context.lineWidth = line.dash ? 1.2 : 1.5;
      context.setLineDash(line.dash ? [5, 4] : []);
      for (const path of line.paths) {
        context.beginPath();
        for (let i = 0; i < path.length; i += 2) {
          const [x, y] = toScreen(path[i] + 0.5, path[i + 1] + 0.5);
          if (i === 0) context.moveTo(x, y); else context.lineTo(x, y);
        }
        context.stroke();
      }
    }
    const [x, y] = toScreen(panel.crosshair[1] + 0.5, panel.crosshair[0] + 0.5);
    context.setLineDash([]);
    context.strokeStyle = CROSSHAIR;
    context.lineWidth = 1;
    context.beginPath();
    context.moveTo(x, 0); context.lineTo(x, height);
    context.moveTo(0, y); context.lineTo(width, y);
    context.stroke();
  }

  const showCrosshair = () => { readout.textContent = describe(panel.crosshair[0], panel.crosshair[1]); };
  let press = null;
  canvas.addEventListener("wheel", (event) => {
    event.preventDefault();
    const [x, y] = toImage(event);
    const box = canvas.getBoundingClientRect();
    view.zoom *= event.deltaY < 0 ? 1.25 : 0.8;
    clamp();
    view.x = x - (event.clientX - box.left) / scaleX();
    view.y = y - (event.clientY - box.top) / scaleY();
    clamp();
    redraw();
  }, { passive: false });
  canvas.addEventListener("mousedown", (event) => { press = { x: event.clientX, y: event.clientY, moved: false }; });
  canvas.addEventListener("mousemove", (event) => {
    if (press && event.buttons) {
      const dx = event.clientX - press.x;
      const dy = event.clientY - press.y;
      if (press.moved || Math.abs(dx) + Math.abs(dy) > 3) {
        press.moved = true;
        view.x -= dx / scaleX();
        view.y -= dy / scaleY();
        press.x = event.clientX;
        press.y = event.clientY;
        clamp();
        redraw();
      }
    }
    const [x, y] = toImage(event).map(Math.floor);
    if (x >= 0 && y >= 0 && x < panel.columns && y < panel.rows) readout.textContent = describe(y, x);
  });
  canvas.addEventListener("mouseleave", showCrosshair);
  canvas.addEventListener("mouseup", (event) => {
    const clicked = press && !press.moved;
    press = null;
    if (!clicked) return;
    const [column, row] = toImage(event).map(Math.floor);
    if (column >= 0 && row >= 0 && column < panel.columns && row < panel.rows) {
      setTriggerValue("click", { panel: number, plane: panel.plane, row, column });
    }
  });
  canvas.addEventListener("dblclick", () => { view.zoom = 1; view.x = 0; view.y = 0; redraw(); });
  linked.push(() => { if (image.complete) draw(); });
  new ResizeObserver(() => { if (image.complete && canvas.clientWidth !== width) draw(); }).observe(canvas);
  image.onload = draw;
  image.src = panel.image;
  showCrosshair();
  return figure;
}

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  let root = parentElement.querySelector(".dp-views");
  if (!root) {
    root = document.createElement("div");
    root.className = "dp-views";
    parentElement.appendChild(root);
  }
  root.replaceChildren(legendElement(data.legend));
  painters.clear();
  const row = document.createElement("div");
  row.className = "dp-row";
  row.style.gridTemplateColumns = `repeat(${data.panels.length}, minmax(0, 1fr))`;
  data.panels.forEach((panel) => row.appendChild(panelElement(panel, panel.number, setTriggerValue)));
  root.appendChild(row);
}
