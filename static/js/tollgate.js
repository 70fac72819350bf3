// Small page behaviours; no inline script anywhere (the CSP forbids it).
document.addEventListener("click", (event) => {
  const button = event.target.closest("button.copy[data-copy]");
  if (!button) return;
  const source = document.querySelector(button.dataset.copy);
  if (source && navigator.clipboard) {
    navigator.clipboard.writeText(source.textContent.trim()).then(() => {
      button.textContent = "Copied";
    });
  }
});

// A field shown only for some values of another field of its form:
// data-show-when="transport=streamable-http sse" (the server form's URL and command).
function applyShowWhen(root) {
  root.querySelectorAll("[data-show-when]").forEach((input) => {
    const [name, values] = input.dataset.showWhen.split("=");
    const control = input.form && input.form.elements.namedItem(name);
    if (!control) return;
    const wrapper = input.closest(".field") || input;
    const update = () => {
      wrapper.hidden = !values.split(" ").includes(control.value);
    };
    control.addEventListener("change", update);
    update();
  });
}
document.addEventListener("DOMContentLoaded", () => applyShowWhen(document));

// A filter box: <input data-filter="#list"> hides the [data-filter-item] elements of #list
// whose text does not contain what was typed, and the [data-filter-group]s left empty.
document.addEventListener("input", (event) => {
  const box = event.target.closest("input[data-filter]");
  if (!box) return;
  const list = document.querySelector(box.dataset.filter);
  if (!list) return;
  const needle = box.value.trim().toLowerCase();
  list.querySelectorAll("[data-filter-item]").forEach((item) => {
    item.hidden = needle !== "" && !item.dataset.filterItem.toLowerCase().includes(needle);
  });
  list.querySelectorAll("[data-filter-group]").forEach((group) => {
    group.hidden = !group.querySelector("[data-filter-item]:not([hidden])");
  });
});
// Enter in a filter box filters; it must not submit the surrounding form.
document.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && event.target.matches("input[data-filter]")) {
    event.preventDefault();
  }
});

// The tenant navigation marks the page you are on (or the list it belongs to): the link whose
// path is the longest prefix of this page's path.
document.addEventListener("DOMContentLoaded", () => {
  const here = window.location.pathname;
  let best = null;
  document.querySelectorAll("nav.tenant-nav .nav-group a[href]").forEach((link) => {
    const path = new URL(link.href, window.location.href).pathname;
    if (here.startsWith(path) && (!best || path.length > best.path.length)) {
      best = { link, path };
    }
  });
  if (best) best.link.setAttribute("aria-current", "page");
});
