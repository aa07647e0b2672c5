<?php
/**
 * UnikGate: lets unikgate open Matomo sessions with signed, single-use assertions, shows the
 * @unikname sign-in on Matomo's own login page, and gives superusers a page of @unikname links
 * and sessions (Administration → System → Unikname: Menu.php, Controller::admin,
 * templates/admin.twig, filled by unikgate's own script).
 * Configuration (config/config.ini.php):
 *   [UnikGate]
 *   shared_secret = "…at least 32 bytes, the same as unikgate's matomo.shared_secret…"
 *   allow_superusers = 1
 *   prefix = "/_unikgate"  ; unikgate's endpoints (default: "_unikgate" beside the path Matomo
 *                          ; is served at: /_unikgate, or /analytics/_unikgate under /analytics/)
 *   public_url = "https://analytics.example.com"          ; unikgate's server.public_url: the
 *                          ; audience of its assertions (default: the URL Matomo computes for the
 *                          ; request, which from Matomo 5.7 on is http:// behind TLS unless
 *                          ; [General] proxy_scheme_headers[] names X-Forwarded-Proto)
 *   login_button = "…"     ; the button on Matomo's login page (default: the translated
 *                          ; "Connect with your private @unikname")
 * Texts: lang/<language>.json, in the language Matomo uses for the person.
 */

namespace Piwik\Plugins\UnikGate;

use Piwik\Config;
use Piwik\Option;
use Piwik\Piwik;

class UnikGate extends \Piwik\Plugin
{
    public const DEFAULT_PREFIX = '/_unikgate';
    public const DEFAULT_BUTTON = 'Connect with your private @unikname';
    /**
     * The option (Matomo's option table) naming who a user made by action=provision belongs to:
     * `UnikGate_owner_<login>` = the assertion's owner. Removed with the user.
     */
    public const OWNER_OPTION = 'UnikGate_owner_';

    public function registerEvents()
    {
        return [
            'Template.loginNav' => 'loginButton',
            'Template.userSecurity.afterPassword' => 'securitySection',
            'AssetManager.getJavaScriptFiles' => 'javaScriptFiles',
            'UsersManager.deleteUser' => 'forgetOwner',
        ];
    }

    /**
     * A deleted user's owner goes with it: a new user of the same login, made by someone else,
     * is never taken for a retry of the old one's provisioning.
     */
    public function forgetOwner($login)
    {
        Option::delete(self::OWNER_OPTION . $login);
    }

    /** @return array<string, mixed> */
    public static function settings(): array
    {
        $section = Config::getInstance()->UnikGate;
        return is_array($section) ? $section : [];
    }

    /**
     * `[UnikGate] public_url` as an audience ("https://host/"), '' when unset, null when it is set
     * but is not an http(s) URL without query or fragment.
     */
    public static function publicUrl(): ?string
    {
        $u = trim((string) (self::settings()['public_url'] ?? ''));
        if ($u === '') {
            return '';
        }
        if (preg_match('#^https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~!$&\'()*+,;=:@%/-]*)?$#', $u) !== 1) {
            return null;
        }
        return rtrim($u, '/') . '/';
    }

    /**
     * unikgate's path prefix: `[UnikGate] prefix` when it is a plain absolute path, else
     * `_unikgate` beside the path Matomo is served at (unikgate puts its endpoints under
     * server.public_url's path: `/analytics/_unikgate` when Matomo is at /analytics/).
     */
    public static function prefix(): string
    {
        $p = (string) (self::settings()['prefix'] ?? '');
        if (preg_match('#^/[A-Za-z0-9._~/-]*$#', $p) === 1 && strpos($p, '//') === false) {
            return rtrim($p, '/');
        }
        return self::defaultPrefix(\Piwik\Url::getCurrentScriptPath());
    }

    /** `_unikgate` beside `$scriptPath` (Matomo's folder in the URL, "/" or "/analytics/"). */
    public static function defaultPrefix(string $scriptPath): string
    {
        if (preg_match('#^/([A-Za-z0-9._~-]+/)*$#', $scriptPath) !== 1) {
            return self::DEFAULT_PREFIX;
        }
        return rtrim($scriptPath, '/') . self::DEFAULT_PREFIX;
    }

    /**
     * The page a person asked for, as a local path for unikgate's `rd` (unikgate validates it
     * again): Matomo shows its login page at the URL that needed a session.
     */
    public static function requestedPage(): string
    {
        $uri = (string) ($_SERVER['REQUEST_URI'] ?? '/');
        if ($uri === '' || $uri[0] !== '/' || strpos($uri, '//') === 0 || preg_match('/[\s\\\\]/', $uri) === 1
            || preg_match('/[?&]module=Login(&|$)/i', $uri) === 1) {
            return '/index.php';
        }
        return $uri;
    }

    /** Matomo's login page, below the form: the @unikname sign-in, keeping the page asked for. */
    public function loginButton(&$out, $position = null)
    {
        if ($position !== 'bottom') {
            return;
        }
        $label = trim((string) (self::settings()['login_button'] ?? ''));
        if ($label === '') {
            $label = Piwik::translate('UnikGate_LoginButton');
        }
        $href = self::prefix() . '/sign_in?rd=' . rawurlencode(self::requestedPage());
        $out .= '<span id="unikgate_login" style="display:block;margin-top:1.5em">'
            . '<a class="btn" href="' . htmlspecialchars($href, ENT_QUOTES, 'UTF-8') . '">'
            . htmlspecialchars($label, ENT_QUOTES, 'UTF-8') . '</a></span>';
    }

    /** The section's script (it does nothing on other pages). */
    public function javaScriptFiles(&$files)
    {
        $files[] = 'plugins/UnikGate/javascripts/unikgate.js';
    }

    /**
     * Personal → Security: the "Unikname" section. Matomo 5 compiles what this event returns as a
     * Vue template (no script runs, `{{ }}` is Vue's), so this is a static placeholder holding
     * the texts; javascripts/unikgate.js fills it from unikgate's `<prefix>/status`, the
     * browser's own session read same-origin. The plugin itself holds no sign-in code.
     */
    public function securitySection(&$out)
    {
        $login = Piwik::getCurrentUserLogin();
        if ($login === '' || $login === 'anonymous') {
            return;
        }
        $attr = static function (string $s): string {
            // Also no Vue interpolation: "{{" never reaches the template compiler.
            return str_replace('{{', '{ {', htmlspecialchars($s, ENT_QUOTES, 'UTF-8'));
        };
        $data = [
            'prefix' => self::prefix(),
            'login' => $login,
            'rd' => self::requestedPage(),
        ];
        foreach (['Loading', 'LinkedTo', 'LinkedElsewhere', 'NotLinked', 'Unlink', 'UnlinkOff', 'Link', 'Unavailable'] as $key) {
            $data['t-' . strtolower($key)] = Piwik::translate('UnikGate_' . $key);
        }
        $attrs = '';
        foreach ($data as $name => $value) {
            $attrs .= ' data-' . $name . '="' . $attr($value) . '"';
        }
        $out .= '<div class="card" id="unikgate-section"><div class="card-content">'
            . '<h2 class="card-title">' . $attr(Piwik::translate('UnikGate_SectionTitle')) . '</h2>'
            . '<p>' . $attr(Piwik::translate('UnikGate_Intro')) . '</p>'
            . '<div id="unikgate-security" data-state="loading"' . $attrs . '>'
            . '<p>' . $attr(Piwik::translate('UnikGate_Loading')) . '</p></div>'
            . '</div></div>';
    }
}
