<?php
/**
 * index.php?module=UnikGate&action=login  (POST assertion=…)  → 302 to rd with a session
 * index.php?module=UnikGate&action=whoami                     → {"login":"alice"} / {"login":null}
 */

namespace Piwik\Plugins\UnikGate;

use Piwik\Common;
use Piwik\Db;
use Piwik\Piwik;
use Piwik\Plugins\UsersManager\Model;
use Piwik\Session\SessionFingerprint;
use Piwik\Session\SessionInitializer;
use Piwik\Url;

class Controller extends \Piwik\Plugin\Controller
{
    private function refuse(string $reason): void
    {
        http_response_code(403);
        header('Content-Type: text/plain; charset=utf-8');
        header('Cache-Control: no-store');
        echo 'UnikGate: ' . str_replace(["\r", "\n"], ' ', $reason) . "\n";
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
        try {
            $verifier = new Assertion((string) ($settings['shared_secret'] ?? ''), Url::getCurrentUrlWithoutFileName());
            $claims = $verifier->verify($token, time(), function (string $jti, int $until) {
                return $this->remember($jti, $until);
            });
        } catch (AssertionException $e) {
            $this->refuse($e->getMessage());
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
        (new SessionFingerprint())->setTwoFactorAuthenticationVerified();
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
