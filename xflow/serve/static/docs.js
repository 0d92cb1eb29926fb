// Renders /openapi.json as a readable page: each route with its parameters, body and answers (no library needed).
"use strict";

const TOKEN_KEY = "xflow-serve-token";
const $ = (selector) => document.querySelector(selector);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function schemaText(schema) {
  if (!schema) return "";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if (schema.enum) return schema.enum.join(" | ");
  return schema.type ? [].concat(schema.type).join(" | ") : "object";
}

async function load() {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["Authorization"] = "Bearer " + token;
  const response = await fetch("/openapi.json", { headers });
  if (response.status === 401) {
    $("#token-form").classList.remove("hidden");
    return;
  }
  $("#token-form").classList.add("hidden");
  const doc = await response.json();
  $("#intro").replaceChildren(el("h2", `${doc.info.title} ${doc.info.version}`), el("p", doc.info.description));
  const routes = [];
  for (const [path, methods] of Object.entries(doc.paths)) {
    for (const [method, operation] of Object.entries(methods)) {
      const box = el("section", null, "panel");
      const title = el("h2");
      title.append(el("code", method.toUpperCase() + " " + path));
      box.append(title, el("p", operation.summary));
      const parameters = operation.parameters || [];
      if (parameters.length) {
        const table = el("table");
        table.append(el("tr"));
        table.firstChild.append(el("th", "parameter"), el("th", "in"), el("th", "type"), el("th", "meaning"));
        for (const parameter of parameters) {
          const row = el("tr");
          row.append(el("td", parameter.name + (parameter.required ? " *" : ""), "mono"), el("td", parameter.in),
            el("td", schemaText(parameter.schema)), el("td", parameter.description || ""));
          table.append(row);
        }
        box.append(table);
      }
      if (operation.requestBody) {
        const body = operation.requestBody;
        box.append(el("p", "Body (application/json" + (body.required ? ", required" : "") + "): " +
          (body.description || schemaText(body.content["application/json"].schema))));
      }
      const answers = el("ul");
      for (const [code, answer] of Object.entries(operation.responses)) {
        answers.append(el("li", `${code}: ${answer.description}`));
      }
      box.append(answers);
      routes.push(box);
    }
  }
  $("#routes").replaceChildren(...routes);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#token-form").addEventListener("submit", (submitted) => {
    submitted.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token-input").value);
    load();
  });
  load().catch((error) => {
    $("#message").textContent = String(error);
    $("#message").classList.remove("hidden");
  });
});
