// Pipeline board: a column per stage, leads as cards; drag a card (or use its "Move to" menu
// from the keyboard) to move the lead, which writes lead.stage_changed through the API.
import { html, useState } from "../../vendor/htm-preact-standalone.module.js";
import { get, post, qs } from "../api.js";
import { useData, useLive, ErrorNote, ChannelBadge, Time } from "../ui.js";

async function loadBoard(pipelineId, q) {
  const pipelines = await get("/v1/pipelines");
  const active = pipelines.filter((p) => !p.archived);
  const pipeline = active.find((p) => p.id === pipelineId) || active.find((p) => p.is_default) || active[0];
  const stages = pipeline ? pipeline.stages.filter((s) => !s.archived) : [];
  const pages = await Promise.all(stages.map((s) => get(`/v1/leads${qs({ stage_id: s.id, q, limit: 100 })}`)));
  return { pipelines: active, pipeline, q, columns: stages.map((s, i) => ({ stage: s, leads: pages[i].items, cursor: pages[i].next_cursor || null })) };
}

export function Board({ ctx }) {
  const [pipelineId, setPipelineId] = useState(null);
  const [q, setQ] = useState("");
  const [error, setError] = useState(null);
  const [over, setOver] = useState(null);
  // Leads past a column's first 100, loaded on request: stage id -> { leads, cursor }.
  const [extra, setExtra] = useState({});
  const board = useData(async () => { const b = await loadBoard(pipelineId, q); setExtra({}); return b; }, [pipelineId, q]);
  async function showMore(col) {
    const cursor = extra[col.stage.id] ? extra[col.stage.id].cursor : col.cursor;
    try {
      const page = await get(`/v1/leads${qs({ stage_id: col.stage.id, q: board.data.q, limit: 100, cursor })}`);
      setExtra((x) => ({ ...x, [col.stage.id]: { leads: [...((x[col.stage.id] || {}).leads || []), ...page.items], cursor: page.next_cursor || null } }));
    } catch (err) { setError(err); }
  }
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
      ${data && data.columns.map((c) => ({ ...c, leads: [...c.leads, ...((extra[c.stage.id] || {}).leads || []).filter((l) => !c.leads.some((k) => k.id === l.id))], more: extra[c.stage.id] ? !!extra[c.stage.id].cursor : !!c.cursor })).map((col) => html`<section key=${col.stage.id}
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
