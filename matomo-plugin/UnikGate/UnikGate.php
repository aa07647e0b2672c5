<?php
/**
 * UnikGate: lets unikgate open Matomo sessions with signed, single-use assertions, and shows the
 * @unikname sign-in on Matomo's own login page.
 * Configuration (config/config.ini.php):
 *   [UnikGate]
 *   shared_secret = "…at least 32 bytes, the same as unikgate's matomo.shared_secret…"
 *   allow_superusers = 1
 *   prefix = "/_unikgate"                                  ; unikgate's server.prefix
 *   login_button = "Connect with your private @unikname"   ; the button on Matomo's login page
 */

namespace Piwik\Plugins\UnikGate;

use Piwik\Config;

class UnikGate extends \Piwik\Plugin
{
    public const DEFAULT_PREFIX = '/_unikgate';
    public const DEFAULT_BUTTON = 'Connect with your private @unikname';

    public function registerEvents()
    {
        return ['Template.loginNav' => 'loginButton'];
    }

    /** @return array<string, mixed> */
    public static function settings(): array
    {
        $section = Config::getInstance()->UnikGate;
        return is_array($section) ? $section : [];
    }

    /** unikgate's path prefix: a plain absolute path, else the default. */
    public static function prefix(): string
    {
        $p = (string) (self::settings()['prefix'] ?? self::DEFAULT_PREFIX);
        return preg_match('#^/[A-Za-z0-9._~/-]*$#', $p) === 1 && strpos($p, '//') === false
            ? rtrim($p, '/') : self::DEFAULT_PREFIX;
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
        $label = (string) (self::settings()['login_button'] ?? self::DEFAULT_BUTTON);
        if (trim($label) === '') {
            $label = self::DEFAULT_BUTTON;
        }
        $href = self::prefix() . '/sign_in?rd=' . rawurlencode(self::requestedPage());
        $out .= '<span id="unikgate_login" style="display:block;margin-top:1.5em">'
            . '<a class="btn" href="' . htmlspecialchars($href, ENT_QUOTES, 'UTF-8') . '">'
            . htmlspecialchars($label, ENT_QUOTES, 'UTF-8') . '</a></span>';
    }
}
