<?php
/**
 * UnikGate: lets unikgate open Matomo sessions with signed, single-use assertions.
 * Configuration (config/config.ini.php):
 *   [UnikGate]
 *   shared_secret = "…at least 32 bytes, the same as unikgate's matomo.shared_secret…"
 *   allow_superusers = 1
 */

namespace Piwik\Plugins\UnikGate;

class UnikGate extends \Piwik\Plugin
{
}
