/*
 * The superusers' page: every @unikname link with its live sessions, the refusals of the last
 * days, and two actions (unlink, end a person's sessions). It fills #unikgate-admin from
 * unikgate's same-origin admin API (<prefix>/admin/api/…), which checks at every call that this
 * browser's session belongs to a Matomo superuser. Shown in Matomo's admin (the UnikGate
 * plugin's page: Matomo's look) or in unikgate's own <prefix>/admin (data-look="unikgate").
 * DOM text nodes only (no innerHTML): every value shown came from somebody's sign-in.
 */
(function () {
  'use strict';
  var box = document.getElementById('unikgate-admin');
  if (!box || box.getAttribute('data-filled')) {
    return;
  }
  box.setAttribute('data-filled', '1');
  var prefix = box.getAttribute('data-prefix') || '/_unikgate';
  var matomoLook = box.getAttribute('data-look') !== 'unikgate';
  var T = {};
  var csrf = '';
  var state = { page: 1, q: '', eventsPage: 1 };

  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (attrs[k] !== null && attrs[k] !== undefined) {
        e.setAttribute(k, attrs[k]);
      }
    });
    (children || []).forEach(function (c) {
      e.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    });
    return e;
  }

  function clear(e) {
    while (e.firstChild) {
      e.removeChild(e.firstChild);
    }
  }

  function api(path) {
    return fetch(prefix + '/admin/api/' + path, {
      credentials: 'same-origin',
      headers: { Accept: 'application/json' },
    }).then(function (r) {
      if (r.status === 403) {
        throw new Error('forbidden');
      }
      if (!r.ok) {
        throw new Error('HTTP ' + r.status);
      }
      return r.json();
    });
  }

  function post(path, fields) {
    var body = new URLSearchParams(fields);
    body.set('csrf', csrf);
    return fetch(prefix + '/admin/api/' + path, {
      method: 'POST',
      credentials: 'same-origin',
      headers: { Accept: 'application/json' },
      body: body,
    }).then(function (r) {
      if (r.status === 403) {
        throw new Error('forbidden');
      }
      if (!r.ok) {
        throw new Error('HTTP ' + r.status);
      }
      return r.json();
    });
  }

  function card(title, id) {
    var content = el('div', { 'class': matomoLook ? 'card-content' : 'section', id: id });
    if (title) {
      content.appendChild(el(matomoLook ? 'h2' : 'h2', { 'class': matomoLook ? 'card-title' : null }, [title]));
    }
    var c = el('div', { 'class': matomoLook ? 'card' : 'admin-section' }, [content]);
    box.appendChild(c);
    return content;
  }

  function table(id, heads) {
    var thead = el('thead', {}, [el('tr', {}, heads.map(function (h) { return el('th', {}, [h]); }))]);
    var tbody = el('tbody', {});
    var t = el('table', { id: id, 'class': matomoLook ? 'entityTable dataTable' : 'admin-table' }, [thead, tbody]);
    // Narrow screens scroll the table, not the page (set through the DOM: no inline style).
    var wrap = el('div', { 'class': 'unikgate-scroll' }, [t]);
    wrap.style.overflowX = 'auto';
    return { table: wrap, body: tbody };
  }

  var message = el('p', { id: 'unikgate-message', role: 'status', 'aria-live': 'polite' });

  function say(text, bad) {
    clear(message);
    message.className = bad ? 'error' : 'notice';
    if (text) {
      message.appendChild(document.createTextNode(text));
    }
  }

  function failed(e) {
    say(e && e.message === 'forbidden' ? T.forbidden : T.failed, true);
  }

  // A button that acts on the second click ("Sure?"), so that a stray click changes nothing.
  function action(label, cls, run) {
    var b = el('button', { type: 'button', 'class': cls + (matomoLook ? ' btn btn-small' : ' secondary') }, [label]);
    b.addEventListener('click', function () {
      if (!b.getAttribute('data-armed')) {
        b.setAttribute('data-armed', '1');
        b.textContent = T.confirm + ' ' + label;
        return;
      }
      b.disabled = true;
      run().then(loadLinks, failed);
    });
    return b;
  }

  var linksBox, eventsBox, search, count, prev, next, linksTable, eventsTable, eventsMore;

  function build() {
    linksBox = card(T.links, 'unikgate-links-card');
    search = el('input', { id: 'unikgate-search', type: 'search', placeholder: T.search, 'aria-label': T.search });
    var timer = null;
    search.addEventListener('input', function () {
      clearTimeout(timer);
      timer = setTimeout(function () {
        state.q = search.value.trim();
        state.page = 1;
        loadLinks();
      }, 250);
    });
    linksBox.appendChild(el('p', {}, [search]));
    linksBox.appendChild(message);
    linksTable = table('unikgate-links', [T.matomo_login, T.unikname, T.linked, T.last_sign_in, T.sessions, T.last_seen, T.client_ip, T.actions]);
    linksBox.appendChild(linksTable.table);
    count = el('span', { id: 'unikgate-count' });
    prev = el('button', { type: 'button', id: 'unikgate-prev', 'class': matomoLook ? 'btn btn-flat' : 'link' }, [T.previous]);
    next = el('button', { type: 'button', id: 'unikgate-next', 'class': matomoLook ? 'btn btn-flat' : 'link' }, [T.next]);
    prev.addEventListener('click', function () { state.page -= 1; loadLinks(); });
    next.addEventListener('click', function () { state.page += 1; loadLinks(); });
    linksBox.appendChild(el('p', { 'class': 'pager' }, [prev, ' ', count, ' ', next]));

    eventsBox = card(T.refusals, 'unikgate-refusals-card');
    eventsTable = table('unikgate-refusals', [T.at, T.unikname, T.matomo_login, T.client_ip, T.reason]);
    eventsBox.appendChild(eventsTable.table);
    eventsMore = el('button', { type: 'button', id: 'unikgate-events-next', 'class': matomoLook ? 'btn btn-flat' : 'link' }, [T.next]);
    eventsMore.addEventListener('click', function () { state.eventsPage += 1; loadEvents(); });
    eventsBox.appendChild(el('p', { 'class': 'pager' }, [eventsMore]));
  }

  function when(iso) {
    return iso ? iso.replace('T', ' ').replace(/(:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$/, '$1 UTC') : T.never;
  }

  function loadLinks() {
    var query = 'links?page=' + state.page + '&per_page=25&q=' + encodeURIComponent(state.q);
    return api(query).then(function (d) {
      clear(linksTable.body);
      if (!d.links.length) {
        linksTable.body.appendChild(el('tr', {}, [el('td', { colspan: '8' }, [T.none])]));
      }
      d.links.forEach(function (l) {
        var acts = el('td', {}, [
          action(T.end_sessions, 'unikgate-end', function () {
            return post('end_sessions', { link: l.id }).then(function (r) {
              say(T.done_end.replace('{login}', l.matomo_login).replace('{count}', String(r.ended)));
            });
          }),
          ' ',
          action(T.unlink, 'unikgate-unlink', function () {
            return post('unlink', { link: l.id }).then(function () {
              say(T.done_unlink.replace('{login}', l.matomo_login));
            });
          }),
        ]);
        linksTable.body.appendChild(el('tr', { 'data-login': l.matomo_login }, [
          el('td', {}, [l.matomo_login]),
          el('td', { title: l.subject }, [l.unikname]),
          el('td', {}, [when(l.linked)]),
          el('td', {}, [when(l.last_sign_in)]),
          el('td', { 'class': 'sessions' }, [String(l.sessions)]),
          el('td', {}, [l.sessions ? when(l.last_seen) : '']),
          el('td', {}, [l.client_ip || '']),
          acts,
        ]));
      });
      var first = d.total ? (d.page - 1) * d.per_page + 1 : 0;
      var last = Math.min(d.total, d.page * d.per_page);
      count.textContent = T.page.replace('{first}', first).replace('{last}', last).replace('{total}', d.total);
      prev.disabled = d.page <= 1;
      next.disabled = last >= d.total;
    }, failed);
  }

  function loadEvents() {
    return api('events?days=7&event=refused&page=' + state.eventsPage).then(function (d) {
      if (state.eventsPage === 1) {
        clear(eventsTable.body);
      }
      if (!d.events.length && state.eventsPage === 1) {
        eventsTable.body.appendChild(el('tr', {}, [el('td', { colspan: '5' }, [T.no_refusals])]));
      }
      d.events.forEach(function (e) {
        eventsTable.body.appendChild(el('tr', {}, [
          el('td', {}, [when(e.at)]),
          el('td', {}, [e.unikname || '']),
          el('td', {}, [e.matomo_login || '']),
          el('td', {}, [e.client_ip || '']),
          el('td', {}, [[e.reason, e.details].filter(Boolean).join(' — ')]),
        ]));
      });
      // Matomo's .btn sets display, which would win over the hidden attribute.
      eventsMore.style.display = d.more ? '' : 'none';
    }, failed);
  }

  api('me').then(function (me) {
    T = me.texts;
    csrf = me.csrf;
    build();
    loadLinks();
    loadEvents();
  }, function (e) {
    clear(box);
    box.appendChild(el('p', { 'class': 'error', id: 'unikgate-message' }, [
      e && e.message === 'forbidden'
        ? 'Only Matomo superusers signed in with their @unikname may use this page.'
        : 'unikgate could not be reached; reload the page.',
    ]));
  });
}());
