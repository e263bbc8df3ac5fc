// The report's filters: every change re-adds the inlined facts (drilldown.py) over the cells that pass the
// filters and redraws the KPI, attribution and campaign views with Plotly. The selection is kept in the URL's
// hash, so a filtered view can be bookmarked or sent.
(function () {
  var F = JSON.parse(document.getElementById('facts').textContent);
  var byId = function (id) { return document.getElementById(id); };
  var filters = {from: byId('f-from'), to: byId('f-to'), channel: byId('f-channel'), tier: byId('f-tier'), segment: byId('f-segment')};
  var CONFIG = {displayModeBar: false, responsive: true};  // drag to zoom, double-click to reset
  var COLORS = ['#2b6cb0', '#dd6b20', '#38a169', '#805ad5', '#d53f8c', '#718096', '#d69e2e', '#319795', '#e53e3e'];

  function options(select, values, all) {
    if (all) select.add(new Option(all, ''));
    values.forEach(function (v) { select.add(new Option(v, v)); });
  }
  options(filters.from, F.values.period);
  options(filters.to, F.values.period);
  options(filters.channel, F.values.channel, 'all channels');
  options(filters.tier, F.values.tier, 'all tiers');
  options(filters.segment, F.values.segment, 'all segments');

  function state() {
    var s = {};
    Object.keys(filters).forEach(function (k) { s[k] = filters[k].value; });
    return s;
  }
  function restore() {
    var saved = new URLSearchParams(location.hash.slice(1));
    filters.from.value = F.values.period[0] || '';
    filters.to.value = F.values.period[F.values.period.length - 1] || '';
    ['channel', 'tier', 'segment'].forEach(function (k) { filters[k].value = ''; });
    Object.keys(filters).forEach(function (k) {
      var v = saved.get(k);
      if (v !== null && Array.prototype.some.call(filters[k].options, function (o) { return o.value === v; })) filters[k].value = v;
    });
  }

  // indices of the rows of a fact table that pass the filters
  function selected(cols, s) {
    var out = [], n = cols.period ? cols.period.length : 0;
    for (var i = 0; i < n; i++) {
      if (cols.period[i] < s.from || cols.period[i] > s.to) continue;
      if (s.channel && cols.channel[i] !== s.channel) continue;
      if (s.tier && cols.tier[i] !== s.tier) continue;
      if (s.segment && cols.segment[i] !== s.segment) continue;
      out.push(i);
    }
    return out;
  }
  function sums(cols, rows, key, measures) {
    var groups = new Map();
    rows.forEach(function (i) {
      var k = key ? key(i) : '', g = groups.get(k);
      if (!g) { g = {}; measures.forEach(function (m) { g[m] = 0; }); groups.set(k, g); }
      measures.forEach(function (m) { g[m] += cols[m][i]; });
    });
    return groups;
  }
  function fmt(v, digits) {
    if (v === null || !isFinite(v)) return '';
    return v.toLocaleString('en-US', {maximumFractionDigits: digits === undefined ? (Math.abs(v) >= 1000 ? 0 : 2) : digits});
  }
  function pct(v) { return isFinite(v) ? (100 * v).toFixed(1) + '%' : ''; }
  function tableHtml(head, rows) {
    var esc = function (x) { return String(x).replace(/&/g, '&amp;').replace(/</g, '&lt;'); };
    return '<thead><tr>' + head.map(function (h) { return '<th>' + esc(h) + '</th>'; }).join('') + '</tr></thead><tbody>' +
      rows.map(function (r) { return '<tr>' + r.map(function (c) { return '<td>' + esc(c) + '</td>'; }).join('') + '</tr>'; }).join('') + '</tbody>';
  }
  function layout(title, extra) {
    var l = {title: {text: title, font: {size: 13}}, margin: {l: 55, r: 55, t: 36, b: 40}, height: 300,
             legend: {font: {size: 10}, orientation: 'h', y: -0.2}, font: {size: 10}};
    Object.keys(extra || {}).forEach(function (k) { l[k] = extra[k]; });
    return l;
  }

  function drawKpis(s) {
    var K = F.kpi, rows = selected(K, s), m = ['sessions', 'converted', 'orders', 'revenue', 'new_customers'];
    var t = sums(K, rows, null, m).get('') || {sessions: 0, converted: 0, orders: 0, revenue: 0, new_customers: 0};
    var values = {revenue: t.revenue, orders: t.orders, aov: t.orders ? t.revenue / t.orders : NaN,
                  conversion_rate: t.sessions ? t.converted / t.sessions : NaN, new_customers: t.new_customers, sessions: t.sessions};
    document.querySelectorAll('[data-kpi]').forEach(function (el) {
      var k = el.dataset.kpi, v = values[k];
      el.dataset.value = isFinite(v) ? String(v) : '';
      el.textContent = k === 'conversion_rate' ? pct(v) : fmt(v);
    });
    var per = sums(K, rows, function (i) { return K.period[i]; }, ['revenue', 'orders']);
    var periods = Array.from(per.keys()).sort();
    var p1 = Plotly.react('plot-kpi', [
      {type: 'bar', name: 'revenue', x: periods, y: periods.map(function (p) { return per.get(p).revenue; }), marker: {color: COLORS[0]}},
      {type: 'scatter', mode: 'lines+markers', name: 'orders', yaxis: 'y2', x: periods, y: periods.map(function (p) { return per.get(p).orders; }), line: {color: COLORS[1]}}],
      layout('Revenue and orders per ' + F.freq, {yaxis: {title: {text: 'revenue'}}, yaxis2: {title: {text: 'orders'}, overlaying: 'y', side: 'right'}}), CONFIG);
    var byChannel = sums(K, rows, function (i) { return K.channel[i] + '|' + K.period[i]; }, ['revenue']);
    var channels = F.values.channel.filter(function (c) { return periods.some(function (p) { return byChannel.has(c + '|' + p); }); });
    var p2 = Plotly.react('plot-kpi-channel', channels.map(function (c, j) {
      return {type: 'bar', name: c, x: periods, marker: {color: COLORS[j % COLORS.length]},
              y: periods.map(function (p) { var g = byChannel.get(c + '|' + p); return g ? g.revenue : 0; })};
    }), layout('Revenue by the channel orders were placed on', {barmode: 'stack'}), CONFIG);
    return [p1, p2];
  }

  function drawAttribution(s) {
    var A = F.attribution, rows = selected(A, s);
    var measures = F.models.map(function (m) { return m + ':conversions'; });
    var by = sums(A, rows, function (i) { return A.channel[i]; }, measures);
    var channels = Array.from(by.keys()).sort();
    var p = Plotly.react('plot-attribution', F.models.map(function (m, j) {
      return {type: 'bar', name: m, x: channels, y: channels.map(function (c) { return by.get(c)[m + ':conversions']; }),
              marker: {color: COLORS[j % COLORS.length]}};
    }), layout('Conversions credited to each channel, by model', {barmode: 'group', yaxis: {title: {text: 'attributed conversions'}}}), CONFIG);
    byId('attr-table').innerHTML = tableHtml(['channel'].concat(F.models), channels.map(function (c) {
      return [c].concat(F.models.map(function (m) { return fmt(by.get(c)[m + ':conversions']); }));
    }));
    return [p];
  }

  // Wilson score interval of k successes in n, and Newcombe's hybrid interval for a difference of proportions
  function wilson(k, n, z) {
    var p = k / n, d = 1 + z * z / n, c = p + z * z / (2 * n), h = z * Math.sqrt(p * (1 - p) / n + z * z / (4 * n * n));
    return [(c - h) / d, (c + h) / d];
  }
  function newcombe(kt, nt, kc, nc, z) {
    var pt = kt / nt, pc = kc / nc, a = wilson(kt, nt, z), b = wilson(kc, nc, z), d = pt - pc;
    return [d - Math.sqrt(Math.pow(pt - a[0], 2) + Math.pow(b[1] - pc, 2)), d + Math.sqrt(Math.pow(a[1] - pt, 2) + Math.pow(pc - b[0], 2))];
  }

  function drawCampaigns(s) {
    var C = F.campaigns, rows = selected(C, s), m = ['touches', 'conversions', 'revenue'];
    var by = sums(C, rows, function (i) { return C.campaign_id[i] + '|' + C.group[i]; }, m);
    var channel = {};
    rows.forEach(function (i) { channel[C.campaign_id[i]] = C.channel[i]; });
    var out = Object.keys(channel).sort().map(function (c) {
      var t = by.get(c + '|treatment'), k = by.get(c + '|control');
      if (!t || !k || t.touches < 2 || k.touches < 2) return null;
      var pt = t.conversions / t.touches, pc = k.conversions / k.touches, ci = newcombe(t.conversions, t.touches, k.conversions, k.touches, F.z);
      return {campaign: c, channel: channel[c], treated: t.touches, control: k.touches, pt: pt, pc: pc, lift: pt - pc, low: ci[0], high: ci[1],
              incremental: (pt - pc) * t.touches, rpc: t.revenue / t.touches - k.revenue / k.touches};
    }).filter(Boolean);
    byId('ab-table').innerHTML = tableHtml(['campaign', 'channel', 'treated', 'control', 'rate treated', 'rate control', 'lift',
      'lift low', 'lift high', 'incremental conversions', 'revenue per customer lift'], out.map(function (r) {
      return [r.campaign, r.channel, fmt(r.treated), fmt(r.control), pct(r.pt), pct(r.pc), pct(r.lift), pct(r.low), pct(r.high), fmt(r.incremental), fmt(r.rpc)];
    }));
    byId('ab-count').textContent = out.length + ' campaign(s) with both groups in the selection';
    window.propelCampaigns = out;  // the rows shown, unrounded (the browser test compares them with statsmodels)
    var p = Plotly.react('plot-ab', [{type: 'scatter', mode: 'markers', x: out.map(function (r) { return r.lift; }),
      y: out.map(function (r) { return r.campaign + ' (' + r.channel + ')'; }), marker: {color: COLORS[0]},
      error_x: {type: 'data', symmetric: false, array: out.map(function (r) { return r.high - r.lift; }),
                arrayminus: out.map(function (r) { return r.lift - r.low; }), color: '#a0aec0'}}],
      layout('Conversion lift (treatment - control), ' + Math.round(100 * F.confidence) + '% Newcombe interval',
             {height: 120 + 18 * out.length, xaxis: {tickformat: '.1%', zeroline: true}, yaxis: {automargin: true}, showlegend: false}), CONFIG);
    return [p];
  }

  function redraw() {
    var s = state();
    if (s.from > s.to) { var x = s.from; s.from = s.to; s.to = x; }
    history.replaceState(null, '', '#' + new URLSearchParams(s).toString());
    byId('f-summary').textContent = s.from + ' to ' + s.to + ', ' + (s.channel || 'all channels') + ', ' +
      (s.tier || 'all tiers') + ', ' + (s.segment || 'all segments');
    var drawn = [].concat(drawKpis(s), drawAttribution(s), drawCampaigns(s));
    return Promise.all(drawn).then(function () {
      document.body.dataset.filters = JSON.stringify(s);
      document.body.dataset.redraws = String(Number(document.body.dataset.redraws || 0) + 1);
    });
  }
  // window.propelReady: the promise of the latest redraw (charts drawn), which the page's checks wait for
  Object.keys(filters).forEach(function (k) { filters[k].addEventListener('change', function () { window.propelReady = redraw(); }); });
  byId('f-reset').addEventListener('click', function () { history.replaceState(null, '', '#'); restore(); window.propelReady = redraw(); });
  restore();
  window.propelReady = redraw();
})();
