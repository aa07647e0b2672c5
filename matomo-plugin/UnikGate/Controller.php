<?php
/**
 * The plugin's actions. Each POST action takes one form field, `assertion`: unikgate's signed,
 * single-use assertion (Assertion.php) made for that action (its `act` claim).
 *
 * index.php?module=UnikGate&action=login      POST → 302 to rd with a session for sub
 * index.php?module=UnikGate&action=provision  POST → creates the user sub (email, acc, owner), no
 *     superuser, with the access of acc on the sites that exist, then as login. A login that
 *     exists answers 409 "exists login <login>" unless unikgate made it for the same owner (a
 *     retry: access again, then the session); another user's e-mail 409 "exists email <login>";
 *     Matomo refusing the user (login, e-mail, allowed domains, users admin off) 400.
 * index.php?module=UnikGate&action=access     POST → sets acc's levels on sub's sites where they
 *     differ and, with prune, removes sub's other sites: 200 JSON
 *     {"set":{"<id>":"<level>"},"removed":[<id>],"superuser":false}, only what changed (a
 *     superuser: {"set":{},"removed":[],"superuser":true}, untouched); no session.
 * index.php?module=UnikGate&action=superuser  POST → whether sub is a superuser now, read from the
 *     user table at this moment (unikgate asks before each call of its admin API): 200 JSON
 *     {"login":"<login>","exists":true,"superuser":true|false}, or for an unknown login
 *     {"login":"<sub>","exists":false,"superuser":false}; no session, nothing changed.
 * index.php?module=UnikGate&action=whoami     → {"login":"alice"} / {"login":null}
 * index.php?module=UnikGate&action=admin      GET, superusers only (Matomo's own access-denied
 *     answer for anyone else): Administration → System → "Unikname" (Menu.php), the page
 *     templates/admin.twig, whose content unikgate's <prefix>/static/admin.js fills from
 *     unikgate's own admin API (same origin). Not an assertion action: not in ACTIONS.
 *
 * A refusal is text/plain with `UnikGate: <reason>` on its first line: 403 (the assertion, an
 * unknown login, acc naming what is not a site or a level), 409 (a collision), 400 (Matomo's
 * refusal). After a refused assertion whose signature was good a facts line follows (facts()),
 * for `unikgate doctor`, which reads there which actions this plugin has.
 */

namespace Piwik\Plugins\UnikGate;

use Piwik\Access;
use Piwik\Common;
use Piwik\Config;
use Piwik\Db;
use Piwik\Option;
use Piwik\Piwik;
use Piwik\Plugin\ControllerAdmin;
use Piwik\Plugins\SitesManager\Model as SitesModel;
use Piwik\Plugins\UsersManager\API as UsersManagerApi;
use Piwik\Plugins\UsersManager\Model;
use Piwik\Session\SessionFingerprint;
use Piwik\Session\SessionInitializer;
use Piwik\Url;
use Piwik\Version;
use Piwik\View;

class Controller extends \Piwik\Plugin\Controller
{
    /** The actions this plugin answers (in its facts). */
    public const ACTIONS = ['login', 'whoami', 'provision', 'access', 'superuser'];

    /**
     * `$status` (403 unless said) with the reason on the first line. `$facts` (only for a caller
     * who proved the shared secret: a refused assertion with a good signature) follow on a second
     * line, for `unikgate doctor`: what this Matomo is and how it sees itself.
     */
    private function refuse(string $reason, ?array $facts = null, int $status = 403): void
    {
        http_response_code($status);
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
            'actions' => self::ACTIONS,
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

    /**
     * The assertion of this POST, verified for `$act`: Assertion::verify's answer, or null once
     * the refusal is sent.
     *
     * @return array{sub: string, rd: string, jti: string, exp: int, claims: array<string, mixed>}|null
     */
    private function verified(string $act): ?array
    {
        if (($_SERVER['REQUEST_METHOD'] ?? '') !== 'POST') {
            $this->refuse('POST only');
            return null;
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
            return null;
        }
        try {
            $verifier = new Assertion((string) ($settings['shared_secret'] ?? ''), $configured !== '' ? $configured : $seen);
            return $verifier->verify($token, time(), function (string $jti, int $until) {
                return $this->remember($jti, $until);
            }, $act);
        } catch (AssertionException $e) {
            $reason = $e->getMessage();
            if (strpos($reason, 'wrong audience') === 0) {
                $reason .= $configured !== ''
                    ? " (from [UnikGate] public_url; Matomo sees its own URL as $seen)"
                    : ' (the URL Matomo computes for this request)';
            }
            $this->refuse($reason, $e->signed ? self::facts($seen, (string) $configured) : null);
            return null;
        }
    }

    /**
     * Opens a Matomo session for `$user` (a row of the user table) and sends the browser to `$rd`,
     * the way Matomo 5's Login controller does; superusers only with [UnikGate] allow_superusers.
     *
     * @param array<string, mixed> $user
     */
    private function openSession(array $user, string $rd): void
    {
        $allowSuper = (string) (UnikGate::settings()['allow_superusers'] ?? '1') !== '0';
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
        // has one), or unikgate made the account for their @unikname, and they signed in now with
        // their @unikname, approved on their phone: that is the second factor, so Matomo does not
        // ask for its own code on this session (as LoginOIDC). Matomo 5.14 and later bind the mark
        // to a login (PR #24468) and check it against the session's user; earlier versions take no
        // argument and ignore it.
        (new SessionFingerprint())->setTwoFactorAuthenticationVerified($user['login']);
        header('Cache-Control: no-store');
        header('Location: ' . $rd, true, 302);
    }

    public function login()
    {
        $v = $this->verified('login');
        if ($v === null) {
            return;
        }
        $user = (new Model())->getUser($v['sub']);
        if (empty($user)) {
            $this->refuse('unknown login');
            return;
        }
        $this->openSession($user, $v['rd']);
    }

    public function provision()
    {
        $v = $this->verified('provision');
        if ($v === null) {
            return;
        }
        try {
            $email = Assertion::email($v['claims']);
            $owner = Assertion::owner($v['claims']);
            $acc = Assertion::access($v['claims']);
        } catch (AssertionException $e) {
            $this->refuse($e->getMessage());
            return;
        }
        $login = $v['sub'];
        // Matomo's request is anonymous (no session, no token): the plugin acts as superuser for
        // these calls only. The login stays "anonymous", so Matomo mails nobody about the new user.
        [$status, $outcome] = Access::doAsSuperUser(function () use ($login, $email, $owner, $acc): array {
            $model = new Model();
            $user = $model->getUser($login);
            if (!empty($user)) {
                $made = Option::get(UnikGate::OWNER_OPTION . $user['login']);
                if (!is_string($made) || !hash_equals($made, $owner)) {
                    return [409, 'exists login ' . $user['login']];
                }
            } else {
                $other = $model->getUserByEmail($email);
                if (!empty($other)) {
                    return [409, 'exists email ' . $other['login']];
                }
                try {
                    // A password nobody knows (Matomo's rules: 6 to 200 characters; policy
                    // plugins may ask for each class of character).
                    $password = base64_encode(random_bytes(32)) . 'aA1!';
                    UsersManagerApi::getInstance()->addUser($login, $password, $email, false, null, null);
                } catch (\Exception $e) {
                    return [400, "cannot create $login: " . $e->getMessage()];
                }
                Option::set(UnikGate::OWNER_OPTION . $login, $owner, 0);
                $user = $model->getUser($login);
                if (empty($user)) {
                    return [400, "cannot create $login: Matomo did not keep the user"];
                }
            }
            if ((int) $user['superuser_access'] !== 1) {
                try {
                    $this->grant($user['login'], $acc, false);
                } catch (\Exception $e) {
                    return [400, 'cannot set the access of ' . $user['login'] . ': ' . $e->getMessage()];
                }
            }
            return [0, $user];
        });
        if ($status !== 0) {
            $this->refuse($outcome, null, $status);
            return;
        }
        $this->openSession($outcome, $v['rd']);
    }

    public function access()
    {
        $v = $this->verified('access');
        if ($v === null) {
            return;
        }
        try {
            $acc = Assertion::access($v['claims']);
            $prune = Assertion::prune($v['claims']);
        } catch (AssertionException $e) {
            $this->refuse($e->getMessage());
            return;
        }
        $login = $v['sub'];
        [$status, $outcome] = Access::doAsSuperUser(function () use ($login, $acc, $prune): array {
            $user = (new Model())->getUser($login);
            if (empty($user)) {
                return [403, 'unknown login'];
            }
            if ((int) $user['superuser_access'] === 1) {
                return [200, ['set' => new \stdClass(), 'removed' => [], 'superuser' => true]];
            }
            try {
                [$set, $removed] = $this->grant($user['login'], $acc, $prune);
            } catch (\Exception $e) {
                return [400, 'cannot set the access of ' . $user['login'] . ': ' . $e->getMessage()];
            }
            return [200, ['set' => (object) $set, 'removed' => $removed, 'superuser' => false]];
        });
        if ($status !== 200) {
            $this->refuse($outcome, null, $status);
            return;
        }
        header('Content-Type: application/json; charset=utf-8');
        header('Cache-Control: no-store');
        echo json_encode($outcome, JSON_UNESCAPED_SLASHES);
    }

    /**
     * Gives `$login` (no superuser) the level `$acc` names on each site that exists and where it
     * has another (setUserAccess resets a site's capabilities, so a site already at its level is
     * left alone); with `$prune`, removes every other site it has. Runs as superuser.
     *
     * @param array<int, string> $acc site id => level (Assertion::access)
     * @return array{0: array<int, string>, 1: list<int>} what was set, what was removed
     */
    private function grant(string $login, array $acc, bool $prune): array
    {
        $exists = array_flip(array_map('intval', (new SitesModel())->getSitesId()));
        $current = [];
        // The access table holds roles and capabilities; a site's level is its role.
        foreach ((new Model())->getSitesAccessFromUser($login) as $row) {
            if (in_array($row['access'], Assertion::LEVELS, true)) {
                $current[(int) $row['site']] = $row['access'];
            }
        }
        $set = [];
        $byLevel = [];
        foreach ($acc as $id => $level) {
            if (isset($exists[$id]) && ($current[$id] ?? null) !== $level) {
                $set[$id] = $level;
                $byLevel[$level][] = $id;
            }
        }
        $api = UsersManagerApi::getInstance();
        foreach ($byLevel as $level => $ids) {
            $api->setUserAccess($login, $level, $ids);
        }
        $removed = [];
        if ($prune) {
            foreach (array_keys($current) as $id) {
                if (!isset($acc[$id])) {
                    $removed[] = $id;
                }
            }
            sort($removed);
            if ($removed !== []) {
                $api->setUserAccess($login, 'noaccess', $removed);
            }
        }
        return [$set, $removed];
    }

    /**
     * Whether sub is a superuser, from the user table as it is now (no cache: a superuser
     * demoted in Matomo is seen at once). Nothing changes; no session.
     */
    public function superuser()
    {
        $v = $this->verified('superuser');
        if ($v === null) {
            return;
        }
        $user = (new Model())->getUser($v['sub']);
        $answer = empty($user)
            ? ['login' => $v['sub'], 'exists' => false, 'superuser' => false]
            : [
                'login' => (string) $user['login'],
                'exists' => true,
                'superuser' => (int) $user['superuser_access'] === 1,
            ];
        header('Content-Type: application/json; charset=utf-8');
        header('Cache-Control: no-store');
        echo json_encode($answer, JSON_UNESCAPED_SLASHES);
    }

    /**
     * Administration → System → Unikname (superusers only): the page's frame in Matomo's admin
     * layout; unikgate's script (`<prefix>/static/admin.js`, same origin) fills the container
     * from unikgate's admin API. The plugin itself reads no link and ends no session.
     */
    public function admin()
    {
        Piwik::checkUserHasSuperUserAccess();
        $view = new View('@UnikGate/admin');
        $this->setBasicVariablesView($view);
        ControllerAdmin::setBasicVariablesAdminView($view);
        $view->prefix = UnikGate::prefix();
        $view->login = Piwik::getCurrentUserLogin();
        return $view->render();
    }

    public function whoami()
    {
        header('Content-Type: application/json; charset=utf-8');
        header('Cache-Control: no-store');
        $login = Piwik::isUserIsAnonymous() ? null : Piwik::getCurrentUserLogin();
        echo json_encode(['login' => $login]);
    }
}
