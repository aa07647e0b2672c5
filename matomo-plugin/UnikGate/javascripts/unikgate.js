/*
 * UnikGate: fills the "Unikname" section of Personal → Security (UnikGate.php renders it, with its
 * texts, as a placeholder) from unikgate's <prefix>/status: this browser's own @unikname and its
 * link, read same-origin with the browser's own unikgate session. Nothing else is asked or sent.
 * Plain ES5 and DOM text nodes only (no innerHTML): Matomo merges and minifies this file, joined
 * to the others by a bare newline, so it must not begin with "(" (that would call the previous
 * file's last expression and stop every script after this one): it begins with an assignment.
 */
window.unikgateSecuritySection = function () {
    'use strict';

    function onSecurityPage() {
        var q = '&' + window.location.search.replace('?', '') + '&';
        return q.indexOf('&module=UsersManager&') !== -1 && q.indexOf('&action=userSecurity&') !== -1;
    }

    function el(tag, attrs, text) {
        var e = document.createElement(tag);
        var k;
        for (k in attrs) {
            if (Object.prototype.hasOwnProperty.call(attrs, k)) {
                e.setAttribute(k, attrs[k]);
            }
        }
        if (text) {
            e.appendChild(document.createTextNode(text));
        }
        return e;
    }

    // A sentence with {name} placeholders, the values in bold.
    function sentence(template, values) {
        var p = el('p', {});
        var rest = template;
        while (rest.length) {
            var open = rest.indexOf('{');
            var close = open === -1 ? -1 : rest.indexOf('}', open);
            if (open === -1 || close === -1) {
                p.appendChild(document.createTextNode(rest));
                break;
            }
            var name = rest.substring(open + 1, close);
            p.appendChild(document.createTextNode(rest.substring(0, open)));
            if (Object.prototype.hasOwnProperty.call(values, name)) {
                p.appendChild(el('strong', {}, String(values[name])));
            } else {
                p.appendChild(document.createTextNode(rest.substring(open, close + 1)));
            }
            rest = rest.substring(close + 1);
        }
        return p;
    }

    function render(box, d, s) {
        while (box.firstChild) {
            box.removeChild(box.firstChild);
        }
        var linkHref = d.prefix + '/link?rd=' + encodeURIComponent(d.rd);
        if (s && s.signed_in && s.linked && s.matomo_login === d.login) {
            box.setAttribute('data-state', 'linked');
            box.appendChild(sentence(d.tLinkedto, { unikname: s.unikname, since: s.linked_since || '' }));
            if (s.can_unlink === false) {
                // links.allow_unlink = false: only an administrator unlinks.
                box.appendChild(el('p', { id: 'unikgate-unlink-off' }, d.tUnlinkoff));
            } else {
                var form = el('form', { method: 'post', action: d.prefix + '/unlink' });
                form.appendChild(el('input', { type: 'hidden', name: 'csrf', value: s.csrf }));
                form.appendChild(el('input', { type: 'hidden', name: 'rd', value: d.rd }));
                form.appendChild(el('button', { type: 'submit', 'class': 'btn', id: 'unikgate-unlink' }, d.tUnlink));
                box.appendChild(form);
            }
        } else if (s && s.signed_in && s.linked) {
            box.setAttribute('data-state', 'linked-elsewhere');
            box.appendChild(sentence(d.tLinkedelsewhere, { unikname: s.unikname, login: s.matomo_login }));
        } else {
            box.setAttribute('data-state', 'not-linked');
            box.appendChild(sentence(d.tNotlinked, {}));
            box.appendChild(el('a', { 'class': 'btn', id: 'unikgate-link', href: linkHref }, d.tLink));
        }
    }

    function fill(box) {
        if (box.getAttribute('data-unikgate-filled')) {
            return;
        }
        box.setAttribute('data-unikgate-filled', '1');
        var d = box.dataset;
        var xhr = new XMLHttpRequest();
        xhr.open('GET', d.prefix + '/status', true);
        xhr.setRequestHeader('Accept', 'application/json');
        xhr.onload = function () {
            var s = null;
            try {
                s = xhr.status === 200 ? JSON.parse(xhr.responseText) : null;
            } catch (e) {
                s = null;
            }
            if (!s) {
                box.setAttribute('data-state', 'unavailable');
                while (box.firstChild) {
                    box.removeChild(box.firstChild);
                }
                box.appendChild(el('p', {}, d.tUnavailable));
                return;
            }
            render(box, d, s);
        };
        xhr.onerror = function () {
            box.setAttribute('data-state', 'unavailable');
            box.textContent = d.tUnavailable;
        };
        xhr.send();
    }

    function scan() {
        var box = document.getElementById('unikgate-security');
        if (box) {
            fill(box);
        }
    }

    if (!onSecurityPage() || typeof window.MutationObserver === 'undefined') {
        return;
    }
    // Matomo's Vue page renders the section after this script runs, and may render it again.
    new window.MutationObserver(scan).observe(document.documentElement, { childList: true, subtree: true });
    scan();
};
window.unikgateSecuritySection();
