<?php
/**
 * index.php?module=UnikGate&action=login  (POST assertion=…)  → 302 to rd with a session
 * index.php?module=UnikGate&action=whoami                     → {"login":"alice"} / {"login":null}
 */

namespace Piwik\Plugins\UnikGate;

use Piwik\Common;
use Piwik\Config;
use Piwik\Db;
use Piwik\Piwik;
use Piwik\Plugins\UsersManager\API as UsersManagerApi;
use Piwik\Plugins\UsersManager\Model;
use Piwik\Session\SessionFingerprint;
use Piwik\Session\SessionInitializer;
use Piwik\Url;
use Piwik\Version;

class Controller extends \Piwik\Plugin\Controller
{
    /**
     * 403 with the reason on the first line. `$facts` (only for a caller who proved the shared
     * secret: a refused assertion with a good signature) follow on a second line, for
     * `unikgate doctor`: what this Matomo is and how it sees itself.
     */
    private function refuse(string $reason, ?array $facts = null): void
    {
        http_response_code(403);
        header('Content-Type: text/plain; charset=utf-8');
        header('Cache-Control: no-store');
        echo 'UnikGate: ' . str_replace(["\r", "\n"], ' ', $reason) . "\n";
        if ($facts !== null) {
            echo 'UnikGate-Facts: ' . json_encode($facts, JSON_UNESCAPED_SLASHES) . "\n";
        }
    }

    /** @return array<string, mixed> */
    private static function facts(string $seen, string $configured): array
    {
        $general = Config::getInstance()->General;
        $list = static function ($v): array {
            return is_array($v) ? array_values(array_map('strval', $v)) : [];
        };
        return [
            'matomo' => Version::VERSION,
            'sees' => $seen,
            'public_url' => $configured,
            'proxy_scheme_headers' => $list($general['proxy_scheme_headers'] ?? null),
            'proxy_client_headers' => $list($general['proxy_client_headers'] ?? null),
            'proxy_host_headers' => $list($general['proxy_host_headers'] ?? null),
            'logout_user' => method_exists(UsersManagerApi::class, 'logoutUser'),
        ];
    }

    /** Records a jti until it expires; false when it was seen already (atomic: a unique key). */
    private function remember(string $jti, int $until): bool
    {
        $table = Common::prefixTable('option');
        Db::query("DELETE FROM `$table` WHERE option_name LIKE 'UnikGate_jti_%' AND option_value < ?", [time()]);
        try {
            Db::query(
                "INSERT INTO `$table` (option_name, option_value, autoload) VALUES (?, ?, 0)",
                ['UnikGate_jti_' . hash('sha256', $jti), (string) $until]
            );
            return true;
        } catch (\Exception $e) {
            return false;
        }
    }

    public function login()
    {
        if (($_SERVER['REQUEST_METHOD'] ?? '') !== 'POST') {
            $this->refuse('POST only');
            return;
        }
        $settings = UnikGate::settings();
        $token = isset($_POST['assertion']) && is_string($_POST['assertion']) ? $_POST['assertion'] : '';
        // The audience: unikgate's public URL as configured here, else the URL Matomo computes for
        // this request (from Host and, from Matomo 5.7 on, X-Forwarded-Proto only when
        // proxy_scheme_headers[] names it: behind TLS it is http:// without that line).
        $seen = rtrim(Url::getCurrentUrlWithoutFileName(), '/') . '/';
        $configured = UnikGate::publicUrl();
        if ($configured === null) {
            $this->refuse('[UnikGate] public_url is not an http(s) URL: set it to unikgate\'s server.public_url');
            return;
        }
        try {
            $verifier = new Assertion((string) ($settings['shared_secret'] ?? ''), $configured !== '' ? $configured : $seen);
            $claims = $verifier->verify($token, time(), function (string $jti, int $until) {
                return $this->remember($jti, $until);
            });
        } catch (AssertionException $e) {
            $reason = $e->getMessage();
            if (strpos($reason, 'wrong audience') === 0) {
                $reason .= $configured !== ''
                    ? " (from [UnikGate] public_url; Matomo sees its own URL as $seen)"
                    : ' (the URL Matomo computes for this request)';
            }
            $this->refuse($reason, $e->signed ? self::facts($seen, (string) $configured) : null);
            return;
        }
        $model = new Model();
        $user = $model->getUser($claims['sub']);
        if (empty($user)) {
            $this->refuse('unknown login');
            return;
        }
        $allowSuper = (string) ($settings['allow_superusers'] ?? '1') !== '0';
        if (!$allowSuper && (int) $user['superuser_access'] === 1) {
            $this->refuse('superusers may not sign in through unikgate');
            return;
        }
        $auth = new Auth();
        $auth->setLogin($user['login']);
        $auth->setVouched(true);
        $initializer = new SessionInitializer();
        $initializer->initSession($auth);
        // The person proved this account once with its password (and its two-factor code, when it
        // has one) and signed in now with their @unikname, approved on their phone: that is the
        // second factor, so Matomo does not ask for its own code on this session (as LoginOIDC).
        // Matomo 5.14 and later bind the mark to a login (PR #24468) and check it against the
        // session's user; earlier versions take no argument and ignore it.
        (new SessionFingerprint())->setTwoFactorAuthenticationVerified($user['login']);
        header('Cache-Control: no-store');
        header('Location: ' . $claims['rd'], true, 302);
    }

    public function whoami()
    {
        header('Content-Type: application/json; charset=utf-8');
        header('Cache-Control: no-store');
        $login = Piwik::isUserIsAnonymous() ? null : Piwik::getCurrentUserLogin();
        echo json_encode(['login' => $login]);
    }
}
