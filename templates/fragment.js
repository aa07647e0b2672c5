// unikgate's sign-in page: carries the page's #fragment (Matomo keeps the report a link shows
// there) into the form's return path, so the report asked for is the report shown after sign-in.
// Browsers never send the fragment; without JavaScript sign-in works, without it. unikgate checks
// the whole return path as always (same origin only).
(function () {
  var hash = window.location.hash;
  if (!hash || hash.length < 2 || hash.length > 1024) return;
  if (!/^#[A-Za-z0-9\-._~!$&'()*+,;=:@\/?%]*$/.test(hash)) return;
  var inputs = document.querySelectorAll('form input[name="rd"]');
  for (var i = 0; i < inputs.length; i++) {
    if (inputs[i].value.indexOf('#') === -1) inputs[i].value += hash;
  }
})();
