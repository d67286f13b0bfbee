// Pipeline board: a column per stage, leads as cards; drag a card (or use its "Move to" menu
// from the keyboard) to move the lead, which writes lead.stage_changed through the API.
import { html, useState } from "../../vendor/htm-preact-standalone.module.js";
import { get, post, qs } from "../api.js";
import { useData, useLive, ErrorNote, ChannelBadge, Time } from "../ui.js";

// `pages`: stage id -> how many pages of 100 its column shows ("Show more" adds one); a live
// reload fetches as many again, so what the user opened stays open.
async function loadColumn(stageId, q, pages) {
  let page = await get(`/v1/leads${qs({ stage_id: stageId, q, limit: 100 })}`);
  const leads = [...page.items];
  for (let n = 1; n < pages && page.next_cursor; n++) {
    page = await get(`/v1/leads${qs({ stage_id: stageId, q, limit: 100, cursor: page.next_cursor })}`);
    leads.push(...page.items.filter((l) => !leads.some((k) => k.id === l.id)));
  }
  return { items: leads, next_cursor: page.next_cursor };
}

async function loadBoard(pipelineId, q, pages) {
  const pipelines = await get("/v1/pipelines");
  const active = pipelines.filter((p) => !p.archived);
  const pipeline = active.find((p) => p.id === pipelineId) || active.find((p) => p.is_default) || active[0];
  const stages = pipeline ? pipeline.stages.filter((s) => !s.archived) : [];
  const loaded = await Promise.all(stages.map((s) => loadColumn(s.id, q, pages[s.id] || 1)));
  return { pipelines: active, pipeline, columns: stages.map((s, i) => ({ stage: s, leads: loaded[i].items, more: !!loaded[i].next_cursor })) };
}

export function Board({ ctx }) {
  const [pipelineId, setPipelineId] = useState(null);
  const [q, setQ] = useState("");
  const [error, setError] = useState(null);
  const [over, setOver] = useState(null);
  const [pages, setPages] = useState({});
  const board = useData(() => loadBoard(pipelineId, q, pages), [pipelineId, q, JSON.stringify(pages)]);
  const showMore = (col) => setPages((p) => ({ ...p, [col.stage.id]: (p[col.stage.id] || 1) + 1 }));
  useLive(board.reload, (e) => ["lead.stage_changed", "lead.created", "lead.merged", "lead.erased"].includes(e.type), [board.reload]);
  async function move(leadId, stageId) {
    setError(null);
    try { await post(`/v1/leads/${leadId}/stage`, { stage_id: stageId }); }
    catch (err) { setError(err); }
    board.reload();
  }
  const data = board.data;
  return html`<section class="board-page" aria-labelledby="board-title">
    <div class="page-head">
      <h1 id="board-title">Pipeline</h1>
      ${data && data.pipelines.length > 1 && html`<label>Pipeline <select value=${data.pipeline.id} onChange=${(e) => setPipelineId(e.target.value)}>
        ${data.pipelines.map((p) => html`<option value=${p.id}>${p.name}</option>`)}</select></label>`}
      <label class="sr" for="board-q">Search leads</label>
      <input id="board-q" type="search" placeholder="Search leads" value=${q} onInput=${(e) => setQ(e.target.value)} />
    </div>
    <${ErrorNote} error=${error || board.error} />
    <div class="board" data-testid="board">
      ${data && data.columns.map((col) => html`<section key=${col.stage.id}
          class=${`column ${over === col.stage.id ? "over" : ""}`} data-stage=${col.stage.name} aria-label=${col.stage.name}
          onDragOver=${(e) => { if (ctx.canWrite) { e.preventDefault(); setOver(col.stage.id); } }}
          onDragLeave=${() => setOver(null)}
          onDrop=${(e) => { e.preventDefault(); setOver(null); const id = e.dataTransfer.getData("text/plain"); if (id) move(id, col.stage.id); }}>
        <h2>${col.stage.name} <span class="count" aria-label="leads">${col.leads.length}${col.more ? "+" : ""}</span></h2>
        <ul>
          ${col.leads.map((l) => html`<li key=${l.id} class="card" draggable=${ctx.canWrite ? "true" : "false"} data-lead=${l.id}
              onDragStart=${(e) => { e.dataTransfer.setData("text/plain", l.id); e.dataTransfer.effectAllowed = "move"; }}>
            <a href=${`#/leads/${l.id}`}>${l.contact_name || l.phone_e164 || l.email}</a>
            <div class="small">${l.channels.map((c) => html`<${ChannelBadge} channel=${c} />`)} <${Time} at=${l.last_inbound_at || l.created_at} /></div>
            ${ctx.canWrite && html`<label class="move">Move to
              <select aria-label=${`Move ${l.contact_name || "lead"} to stage`} value=${col.stage.id} onChange=${(e) => move(l.id, e.target.value)}>
                ${data.columns.map((c) => html`<option value=${c.stage.id}>${c.stage.name}</option>`)}
              </select></label>`}
          </li>`)}
        </ul>
        ${col.more && html`<button type="button" class="more" onClick=${() => showMore(col)}>Show more</button>`}
      </section>`)}
    </div>
  </section>`;
}
